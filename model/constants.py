"""Vocabulary of the data contract shared by model and platform: camera order, classes, commands, horizons."""

CAMERAS = (
    "CAM_FRONT",
    "CAM_FRONT_RIGHT",
    "CAM_FRONT_LEFT",
    "CAM_BACK",
    "CAM_BACK_LEFT",
    "CAM_BACK_RIGHT",
)
"""Camera order used everywhere (images tensor dim 1, shard columns): UniAD / BEVFormer order."""

PAST_STEPS = 4  # 2 s of history at 0.5 s
FUTURE_STEPS = 6  # 3 s plan at 0.5 s
STEP_SECONDS = 0.5

COMMANDS = ("turn right", "turn left", "keep forward")
"""Command index order = GPT-Driver's one-hot order [right, left, forward]; texts as in OpenDriveVLA prompts."""

MAP_CLASSES = ("divider", "boundary", "crossing")

DETECTION_CLASSES = (
    "car", "truck", "construction_vehicle", "bus", "trailer", "barrier",
    "motorcycle", "bicycle", "pedestrian", "traffic_cone",
)
"""nuScenes detection classes; ``agent_class`` indexes this tuple (-1: not a detection class)."""

EGO_STATE_FIELDS = ("vx", "vy", "ax", "ay", "yaw_rate", "speed", "steering")
"""``ego_state`` vector: velocity (m/s) and acceleration (m/s^2) in the ego frame, yaw rate (rad/s), speed (m/s),
steering angle (rad; 0 when no CAN bus)."""
