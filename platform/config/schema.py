"""The typed configuration tree of the platform: one dataclass per concern, one root ``Config``.

Every job reads a ``Config`` (``odvla.platform.config.load_config``), built from defaults, then preset YAML files
(model size, stage), then a user YAML, then ``--set a.b=c`` overrides. The resolved tree is logged to MLflow as
params and as ``config.yaml`` with every run.

Units: metres for lengths, seconds for times; frames are the nuScenes ego frame (x forward, y left) unless a field
says otherwise.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from odvla.model.config import ModelConfig
from odvla.model.constants import CAMERAS  # noqa: F401  (re-exported)
from odvla.platform.config.model_catalog import model_preset_names

MODEL_PRESETS = model_preset_names()
"""The model sizes, smallest first: the ``presets/model_<name>.yaml`` files (``model_catalog.py``)."""


@dataclass
class DataConfig:
    dataroot: Optional[str] = None
    """nuScenes dataroot. None: the demo writes a synthetic one."""
    version: str = "v1.0-mini"
    shards: Optional[str] = None
    """Folder of Parquet shards written by ``odvla prepare``."""
    synth_scenes: int = 6
    synth_keyframes: int = 40
    synth_seed: int = 0
    synth_image_width: int = 400
    synth_image_height: int = 225
    rows_per_shard: int = 256
    batch_size: int = 2
    """Rows per batch handed to each train worker (the DeepSpeed micro-batch)."""
    shuffle_buffer: int = 256
    """Rows in each train worker's local shuffle buffer (``iter_torch_batches(local_shuffle_buffer_size=...)``),
    seeded with ``train.seed + epoch``: batches mix scenes instead of following the shards' keyframe order, and a
    resumed run sees the same order. Rows are decoded samples (images at network size), so mind memory on large
    presets. 0: shard order."""
    decode_batch_size: int = 32
    """Rows per ``map_batches`` call of the image decode stage (and per Ray Data block). Larger blocks cost less Ray
    overhead per sample: at 384 x 704 on 2 cores (``odvla bench data``, first pass), 32 gave 1.72-2.02x the
    single-process loop after the first batch (four runs), 16 gave 1.65-1.72x; a block of 32 rows at 384 x 704 is
    156 MB of uint8 images."""
    decode_concurrency: int = 1
    """Decode actors of one CPU each (``odvla.platform.data.decode_pool``); 0: an autoscaling pool of at least one."""
    cache_decoded: str = "auto"
    """Keep a stage's decoded rows in the object store after the first epoch (``ds.materialize()`` on the driver,
    ``odvla.platform.train.stage_data.cache_plan``) so later epochs read them instead of starting the decode actors
    and decoding again. Decoding is deterministic, so the rows and their order are the same either way. 'auto':
    when the stage runs more than one epoch, the decoded rows fit ``cache_decoded_max_mb`` and the cluster has one
    node (decoded blocks held on a lost node could not be rebuilt); 'always': whenever they fit; 'never': not at
    all."""
    cache_decoded_max_mb: float = 1024.0
    """Largest estimated size of the decoded rows (images uint8 at network size) that 'auto' or 'always' keeps."""
    max_agents: int = 32
    max_map_elements: int = 24
    clip_len: int = 1
    """Keyframes per training row (``odvla.platform.data.clips``): the row of keyframe f is the clip of its scene's
    keyframes f-clip_len+1 .. f; the earlier ones run without gradients and hand the previous BEV and the tracked
    queries on (UniAD's queue_length is 3). 1: single keyframes."""
    clip_loss: str = "last"
    """Which frames of a clip carry the loss: 'last' or 'all' (each frame's losses, averaged)."""
    instructions: Optional[str] = None
    """Folder of conversation Parquet files (``odvla prepare --instructions``)."""


@dataclass
class StageConfig:
    """One training stage, as data: its preset ``presets/stage_<name>.yaml`` (or any YAML file given as the stage)
    says what trains, on which data, with which losses, where it starts and what it hands on. The platform knows no
    stage names; the stage list is the set of stage presets, ordered by ``order``."""

    name: str = "stage3"
    order: int = 40
    """Position in the curriculum: a pipeline runs its stages in increasing ``order``."""
    trainable: list = field(default_factory=lambda: ["projectors", "llm", "vision"])
    """Model parts that train (``odvla.model.vla.MODEL_PARTS``: projectors, llm, vision, agent_heads)."""
    registers_model: bool = False
    """The stage's export becomes a new version of ``tracking.registered_model`` when it ends a pipeline (or runs
    alone)."""
    demo_steps: int = 10
    """Optimiser steps of this stage in ``odvla demo`` (``--set train.max_steps=N`` overrides)."""
    init_from: Optional[str] = None
    """Checkpoint to start from: a model export folder, ``runs:/<run_id>`` or ``auto`` (previous stage)."""
    mixture: dict = field(default_factory=lambda: {"planning": 1.0})
    """Task name -> sampling weight of the stage's data mixture."""
    loss_weights: dict = field(default_factory=lambda: {"lm": 1.0, "det": 0.0, "map": 0.0, "motion": 0.0})


@dataclass
class TrainConfig:
    lr: float = 1e-3
    weight_decay: float = 0.0
    warmup_steps: int = 5
    epochs: int = 1
    max_steps: int = 0
    """0: run ``epochs`` over the data; >0 stop after that many optimiser steps."""
    grad_accum: int = 1
    grad_clip: float = 1.0
    zero_stage: int = 1
    bf16: bool = False
    num_workers: int = 1
    use_gpu: bool = False
    cpus_per_worker: int = 1
    storage_path: str = "runs"
    run_name: Optional[str] = None
    checkpoint_every: int = 0
    """Optimiser steps between checkpoints; 0 = only at the end of the stage."""
    max_failures: int = 2
    """Restarts from the last checkpoint after a worker or node failure (-1: unlimited)."""
    capacity_timeout_s: float = 600.0
    """Seconds a restarted run waits for its workers' resources (a lost node to be replaced) before it fails
    with an error naming the missing resources; -1 waits forever. Ray's worker-group start timeout
    (RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S, default 60 s, set on the cluster's nodes) is the granularity."""
    worker_resources: dict = field(default_factory=dict)
    """Extra (custom) resources each train worker requests, e.g. {"h100_node": 1} to keep workers off the head."""
    preemption_grace_s: float = 30.0
    """On a preemption notice (a node drain, as ``ray start`` sends on SIGTERM), workers checkpoint at once if the
    last checkpoint's save time fits before the notice's deadline plus this many seconds (also Ray Train's
    ``FailureConfig.preemption_grace_s``: how long survivors run past the deadline); -1: no check."""
    health_check_interval_s: float = 0.5
    """Seconds between the Ray Train controller's polls of its workers (RAY_TRAIN_HEALTH_CHECK_INTERVAL_S, Ray's
    default 2 s). A finished, failed or lost worker is seen at the next poll, so every stage ended on average one
    interval late: about 3 s of a 10-step stage's 25 s with Ray's default. A poll is one small call per worker; a
    slow reply is not a failure (Ray marks a worker dead only after its poll hangs for minutes). The variable, when
    set in the driver's environment, wins."""
    log_every: int = 1
    seed: int = 0
    profile_steps: int = 0
    """>0: rank 0 records this many optimiser steps with ``torch.profiler`` and logs where their time goes
    (``step_profile.md`` and ``profile/<part>_ms`` in the run; ``odvla bench train --profile``)."""
    profile_warmup: int = 3
    """Optimiser steps before the profiled ones (first-step allocations and caches stay out of the table)."""


@dataclass
class EvalConfig:
    split: str = "val"
    batch_size: int = 4
    concurrency: int = 1
    num_gpus_per_replica: float = 0.0
    max_new_tokens: int = 160
    plots: int = 4
    out: Optional[str] = None
    baseline_mlp_epochs: int = 200
    qa_max_examples: int = 200
    """QA examples of the split scored with BLEU/METEOR/CIDEr/ROUGE-L (0 = all)."""
    temporal: bool = False
    """Plan each val scene in keyframe order carrying the model's SceneState (tracked queries, previous BEV), as
    UniAD's test does; scenes run in parallel on the replica pool. False: every keyframe from an empty state."""


@dataclass
class ServeConfig:
    model: Optional[str] = None
    """Export folder or ``models:/odvla-planner/<version|alias>``."""
    host: str = "127.0.0.1"
    port: int = 8000
    num_replicas: int = 1
    max_ongoing_requests: int = 16
    """Requests a model replica holds at once (running + waiting for a batch); raised to 2 x max_batch_size so
    the next batch fills while one runs."""
    max_batch_size: int = 8
    batch_wait_timeout_s: float = 0.05
    """How long a replica waits for a batch to fill. Arrivals through the HTTP path are staggered by tens of ms
    under load, so a few ms starts small batches (odvla bench serve, 16 clients, tiny on 2 CPUs: mean batch
    2.5 at 5 ms, 5.0 at 50 ms); on a GPU with a fast model a smaller value trades batch size for latency."""
    max_queued_requests: int = 32
    request_timeout_s: float = 30.0
    max_body_bytes: int = 16 * 1024 * 1024
    session_idle_s: float = 300.0
    num_gpus: float = 0.0
    num_cpus: float = 1.0
    """CPUs reserved per model replica."""
    replica_resources: dict = field(default_factory=dict)
    """Extra (custom) resources each model replica requests, e.g. {"h100_node": 1}: one replica per GPU node, off
    the head, so that losing a node loses one replica."""
    torch_threads: int = 1
    """torch intra-op threads per model replica (0: torch's default)."""
    device: str = "auto"
    """'auto' (cuda when the replica sees a GPU), 'cpu' or 'cuda'."""
    ingress_replicas: int = 1
    health_check_period_s: float = 10.0
    autoscaling: bool = False
    """True: model replicas scale between min_replicas and max_replicas (num_replicas is ignored)."""
    min_replicas: int = 1
    max_replicas: int = 2
    target_ongoing_requests: float = 4.0


@dataclass
class TrackingConfig:
    tracking_uri: Optional[str] = None
    """None: ``MLFLOW_TRACKING_URI`` or a local ``mlruns`` store."""
    experiment: str = "opendrivevla"
    registered_model: str = "odvla-planner"
    log_system_metrics: bool = True
    log_checkpoint: bool = True
    """Log the final DeepSpeed checkpoint of each stage as an MLflow artifact (the export is always logged)."""


@dataclass
class SimConfig:
    """Closed-loop simulation (``odvla sim``, ``platform/sim/``)."""

    scenarios: int = 4
    """Normal scenarios: world seeds ``seed .. seed + scenarios - 1``."""
    safety: bool = False
    """Also the four safety scenarios (stationary, frontal, cutin, pedestrian) of each of those seeds."""
    agents: str = "log"
    """'log' (non-reactive replay) or 'idm' (Intelligent Driver Model)."""
    duration_s: float = 15.0
    seed: int = 0
    workers: int = 2
    """Ray actors running rollouts (each with 1 CPU and its own planners); 0 runs them in this process."""
    image_height: int = 225
    image_width: int = 400
    """Rendered camera size (px): the dataset's (``odvla synth --image-size``); the model's input is resized from it."""
    baselines: list = field(default_factory=lambda: ["expert", "constant_velocity", "ego_mlp"])
    animate: bool = True
    """BEV GIF and worst-moment camera strip of each rollout."""
    torch_threads: int = 1
    """Intra-op threads of an in-process model planner (as ``serve.torch_threads``)."""


@dataclass
class SweepConfig:
    mode: str = "ablation"
    """'ablation': grid over stage_sets x model_sizes (x lrs); 'hpo': LR search with a searcher + ASHA."""
    stage_sets: list = field(default_factory=lambda: [["stage3"], ["stage1", "stage3"]])
    model_sizes: list = field(default_factory=lambda: ["tiny"])
    lrs: list = field(default_factory=list)
    """Grid of learning rates for 'ablation' mode (empty: the stage presets' own)."""
    lr_min: float = 1e-5
    lr_max: float = 1e-2
    num_samples: int = 1
    """'hpo': number of trials the searcher proposes."""
    searcher: str = "optuna"
    """'hpo' search algorithm: 'optuna' (TPE) or 'random'."""
    scheduler: str = "asha"
    """'hpo' trial scheduler: 'asha' or 'none'. ASHA stops trials by training loss after each stage."""
    metric: str = "uniad/L2_avg"
    temporal: list = field(default_factory=lambda: ["off"])
    """Temporal-perception axis: 'off' (single keyframes, stateless evaluation) and/or 'on' (training on clips of
    ``temporal_clip_len`` keyframes and ``eval.temporal``); ``[off, on]`` crosses it with the grid."""
    temporal_clip_len: int = 3
    """``data.clip_len`` of a trial with temporal 'on' (UniAD's queue_length is 3)."""
    traj_encodings: list = field(default_factory=list)
    """Trajectory-encoding axis: ``ENCODING[+compact]`` values (``absolute``, ``absolute+compact``,
    ``residual+compact``, ``action``, ...) crossed with the grid; a trial sets ``model.text.traj_encoding`` and
    ``compact_tokens`` (``action``: the codebook beside ``data.shards``). Empty: the presets' own encoding, no axis."""
    max_concurrent_trials: int = 1
    """Trials running at once; 0 = as many of the largest trial as the cluster's GPUs hold."""
    max_failures: int = 1
    """Retries of a failed trial (an error, or its node lost) before it is reported as failed; a retry continues
    after the trial's last finished stage, and its interrupted stage from that stage's last checkpoint."""
    trial_resources: dict = field(default_factory=dict)
    """Extra (custom) Ray resources each trial driver holds besides its 1 CPU, e.g. {"on_demand": 1} to keep the
    drivers off preemptible nodes (their train workers ask for ``train.worker_resources``)."""
    storage_path: str = "runs/sweeps"
    """Folder (shared storage on a cluster) of the sweep's Tune experiment, results table and resume state."""
    name: Optional[str] = None
    """Sweep name (folder under storage_path); None = ``sweep-<time>``. ``--restore`` needs it."""


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    stage: StageConfig = field(default_factory=StageConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    serve: ServeConfig = field(default_factory=ServeConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    sweep: SweepConfig = field(default_factory=SweepConfig)
    sim: SimConfig = field(default_factory=SimConfig)
