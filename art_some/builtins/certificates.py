"""The built-in certificate rules (``register_certificates``)."""
from art_some.hookspecs import hookimpl


@hookimpl
def register_certificates(register):
    from art_some.core.rules import CohenRule, ScaledRule
    from art_some.estimators.data_dependent import FixedSigmaRule, InputDependentRule
    from art_some.estimators.smooth_reduce import VoteAverageRule

    register("cohen", CohenRule, description="Clopper-Pearson bound, the noise's radius, PREDICT's binomial test")
    register("scaled", ScaledRule, description="a rule's radii divided by an L2 operator norm (resize, patches)")
    register("vote_average", VoteAverageRule,
             description="Smooth-Mean's vote-averaged certificate: Hoeffding or empirical-Bernstein bound")
    register("input_dependent", InputDependentRule,
             description="Sukenik et al.'s certificate of input-dependent sigma (Gaussian, L2)")
    register("fixed_sigma", FixedSigmaRule, description="DDRS's per-input Cohen rule; unsound for the input-"
                                                         "dependent classifier (warns)")
