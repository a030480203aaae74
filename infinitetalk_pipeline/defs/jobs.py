"""Jobs the UI, schedules and sensors launch."""

import dagster as dg

from infinitetalk_pipeline.defs.assets import TIMING, VIDEO, video_catalog
from infinitetalk_pipeline.defs.partitions import clips

# A run per clip: a failure stays with its clip, and the GPU pool caps how many render at once. The max runtime
# needs run monitoring (dagster.yaml); the ComfyUI client keeps its own, finer render deadline.
render_clips_job = dg.define_asset_job(
    "render_clips",
    selection=dg.AssetSelection.assets(TIMING, VIDEO),
    partitions_def=clips,
    tags={"dagster/max_runtime": str(4 * 3600)},
    description="Measure and render clips (one run per clip partition).",
)

refresh_catalog_job = dg.define_asset_job(
    "refresh_catalog",
    selection=dg.AssetSelection.assets(video_catalog),
    description="Fold every rendered clip's row into the Parquet catalog.",
)
