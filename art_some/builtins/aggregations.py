"""The built-in vote aggregations over patches or heads (``register_aggregations``)."""
from art_some.hookspecs import hookimpl


@hookimpl
def register_aggregations(register):
    from art_some.aggregations import max_over_patches, mean_over_patches, min_over_patches

    register("max", max_over_patches, description="class-wise max over patches (Smooth-Max); sound")
    register("mean", mean_over_patches, description="class-wise mean over patches (Smooth-Mean); sound")
    register("min", min_over_patches, description="class-wise min over patches; sound")
