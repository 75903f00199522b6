"""All four stages in order (each starts from the previous export), then registers the planner, as a Ray job.

    ray job submit --working-dir . -- python jobs/pipeline.py --model tiny --set data.shards=/data/shards \
        [--stages stage1,stage3] [--set train.max_steps=200]

--set overrides apply to every stage on top of its preset. Rerun with the same --set train.run_name=... to resume.
"""
import sys

from odvla.platform.cli.job_main import pipeline_job_main

if __name__ == "__main__":
    sys.exit(pipeline_job_main(__doc__.splitlines()[0]))
