"""stage1: vision-language alignment (projectors only), as a Ray job.

    ray job submit --address http://<head>:8265 --working-dir . -- \
        python jobs/stage1.py --model tiny --set data.shards=/data/shards --set stage.init_from=runs:/<id>/export

Config: presets (--model, stage stage1) + --config YAML + --set overrides. Rerun with the same
--set train.run_name=... (and train.storage_path) to resume from the last checkpoint.
"""
import sys

from odvla.platform.cli.job_main import stage_job_main

if __name__ == "__main__":
    sys.exit(stage_job_main("stage1", __doc__.splitlines()[0]))
