"""Jobs the UI, schedules and sensors launch."""

import dagster as dg

from infinitetalk_pipeline.defs.assets import TIMING, VIDEO, video_catalog
from infinitetalk_pipeline.defs.partitions import clips
from infinitetalk_pipeline.defs.settings import RENDER_RUN_MAX_RUNTIME_SECONDS

# A run per clip: a failure stays with its clip, and the GPU pool caps how many render at once. The max runtime
# (derived from the render deadline, see settings.py) needs run monitoring (dagster.yaml).
render_clips_job = dg.define_asset_job(
    "render_clips",
    selection=dg.AssetSelection.assets(TIMING, VIDEO),
    partitions_def=clips,
    tags={"dagster/max_runtime": str(RENDER_RUN_MAX_RUNTIME_SECONDS)},
    description="Measure and render clips (one run per clip partition).",
)

refresh_catalog_job = dg.define_asset_job(
    "refresh_catalog",
    selection=dg.AssetSelection.assets(video_catalog),
    description="Fold every rendered clip's row into the Parquet catalog.",
)
