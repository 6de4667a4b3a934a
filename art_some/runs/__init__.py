"""
Runs: what turns the engine into files on disk and commands into library calls.

- :mod:`~art_some.runs.records`: record files (JSONL append-and-flush with resume and a lock, the community TSV),
  the record builder shared by certify and the audit; :mod:`~art_some.runs.header`: their headers (provenance);
- :mod:`~art_some.runs.metrics`: ACR, certified accuracy and the tables, as functions of records;
- :mod:`~art_some.runs.shards`: shard plans and the one merge (certify's files, the audit's folders);
  :mod:`~art_some.runs.distributed`: the torchrun process group of certify, evaluate and train;
- :mod:`~art_some.runs.checkpoints`: the checkpoint metadata that train writes and certify reads;
  :mod:`~art_some.runs.loader`: one model loader (a registered name, an art-some checkpoint, a published one);
- :mod:`~art_some.runs.estimator`: the smoothed estimator a run builds from its options (certify and evaluate);
- :mod:`~art_some.runs.certify`, :mod:`~art_some.runs.evaluate`, :mod:`~art_some.runs.train`: the runs behind
  ``art-some certify``, ``evaluate`` and ``train``, each a function of a config dataclass (and
  :mod:`~art_some.runs.demo`, ``art-some demo``); :mod:`~art_some.runs.config`: config files for every command.

Nothing is imported here, so that importing one module does not pull in the others (and the engine).
"""
