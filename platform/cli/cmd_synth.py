"""``odvla synth``: write a synthetic nuScenes-format dataroot (the embedded default dataset)."""
from __future__ import annotations


def register(sub) -> None:
    p = sub.add_parser("synth", help="write a synthetic nuScenes v1.0-mini dataroot (tables, map expansion, JPEGs)")
    p.add_argument("--out", required=True, metavar="DIR", help="dataroot to write (replaced if it exists)")
    p.add_argument("--scenes", type=int, default=6, help="number of scenes (default: %(default)s)")
    p.add_argument("--keyframes", type=int, default=40, help="keyframes per scene, 2 Hz (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default: %(default)s)")
    p.add_argument("--image-size", default="400x225", metavar="WxH", help="JPEG size (default: %(default)s)")
    p.set_defaults(func=run)


def run(args) -> int:
    import json
    import time

    from odvla.platform.data.prepare import SPLIT_FILE
    from odvla.platform.data.synth import write_synthetic

    try:
        w, h = (int(x) for x in args.image_size.lower().split("x"))
    except ValueError:
        raise ValueError(f"--image-size must look like 400x225, got {args.image_size!r}") from None
    t0 = time.time()
    out = write_synthetic(args.out, scenes=args.scenes, keyframes=args.keyframes, seed=args.seed,
                          image_wh=(w, h), progress=True)
    split = json.loads((out / SPLIT_FILE).read_text())
    print(f"wrote {out}: {args.scenes} scenes x {args.keyframes} keyframes, {w}x{h} images, "
          f"train {len(split['train'])} / val {len(split['val'])} scenes, {time.time() - t0:.1f} s")
    print(f"next: odvla prepare --dataroot {out} --version v1.0-mini --out SHARDS_DIR")
    return 0
