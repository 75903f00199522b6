"""stage2_5: agent-environment interaction (projectors + LLM, agent heads by config), as a Ray job.

    ray job submit --address http://<head>:8265 --working-dir . -- \
        python jobs/stage2_5.py --model tiny --set data.shards=/data/shards --set stage.init_from=runs:/<id>/export

Config: presets (--model, stage stage2_5) + --config YAML + --set overrides. Rerun with the same
--set train.run_name=... (and train.storage_path) to resume from the last checkpoint.
"""
import sys

from odvla.platform.cli.job_main import stage_job_main

if __name__ == "__main__":
    sys.exit(stage_job_main("stage2_5", __doc__.splitlines()[0]))
