"""Bad input gives a clear error naming the sample token and path, and leaves nothing half-written."""
from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from odvla.platform.data import errors as E
from odvla.platform.data.prepare import check_dataroot, load_nuscenes, prepare


def _light_copy(src, dst):
    """Copy tables/maps, link every sensor file individually (so one can be replaced without touching src)."""
    shutil.copytree(src / "v1.0-mini", dst / "v1.0-mini")
    shutil.copytree(src / "maps", dst / "maps")
    shutil.copy(src / "odvla_split.json", dst / "odvla_split.json")
    for d in (src / "samples").iterdir():
        (dst / "samples" / d.name).mkdir(parents=True)
        for f in d.iterdir():
            os.symlink(f, dst / "samples" / d.name / f.name)
    return dst


def _first_front(root):
    s = json.loads((root / "v1.0-mini" / "sample.json").read_text())
    sd = json.loads((root / "v1.0-mini" / "sample_data.json").read_text())
    first = min(s, key=lambda r: r["timestamp"])
    rec = next(r for r in sd if r["sample_token"] == first["token"] and "CAM_FRONT/" in r["filename"])
    return first["token"], root / rec["filename"]


def test_not_a_dataroot(tmp_path):
    with pytest.raises(E.NotNuScenesError, match="not a folder"):
        check_dataroot(tmp_path / "missing", "v1.0-mini")
    (tmp_path / "v1.0-trainval").mkdir()
    with pytest.raises(E.NotNuScenesError, match=r"no table folder 'v1.0-mini' \(found v1.0-trainval\)") as e:
        prepare(tmp_path, "v1.0-mini", tmp_path / "out", num_workers=0, progress=False)
    assert e.value.path.endswith("v1.0-mini")
    assert not (tmp_path / "out").exists()


def test_missing_and_broken_tables(synth_root, tmp_path):
    root = _light_copy(synth_root, tmp_path / "root")
    (root / "v1.0-mini" / "sample_annotation.json").unlink()
    with pytest.raises(E.MissingTableError, match="sample_annotation") as e:
        prepare(root, "v1.0-mini", tmp_path / "out", num_workers=0, progress=False)
    assert e.value.path.endswith("sample_annotation.json") and not (tmp_path / "out").exists()
    shutil.copy(synth_root / "v1.0-mini" / "sample_annotation.json", root / "v1.0-mini")
    (root / "v1.0-mini" / "instance.json").write_text('[{"token": "x", ')
    with pytest.raises(E.MissingTableError, match="'instance' is not valid JSON"):
        load_nuscenes(root, "v1.0-mini")
    shutil.copy(synth_root / "v1.0-mini" / "instance.json", root / "v1.0-mini")
    (root / "maps" / "expansion" / "boston-seaport.json").unlink()
    with pytest.raises(E.MissingTableError, match="map expansion") as e:
        check_dataroot(root, "v1.0-mini")
    assert e.value.path.endswith("boston-seaport.json")


def test_missing_image_names_sample_and_path_and_keeps_old_output(synth_root, shards_dir, tmp_path):
    root = _light_copy(synth_root, tmp_path / "root")
    out = tmp_path / "out"
    shutil.copytree(shards_dir, out)
    before = sorted(p.relative_to(out) for p in out.rglob("*"))
    token, img = _first_front(root)
    img.unlink()
    with pytest.raises(E.MissingImageError) as e:
        prepare(root, "v1.0-mini", out, num_workers=0, progress=False)
    assert e.value.sample_token == token and e.value.path == str(img)
    assert token in str(e.value) and str(img) in str(e.value)
    assert sorted(p.relative_to(out) for p in out.rglob("*")) == before  # previous output intact, no staging


def test_corrupt_jpeg_in_prepare_via_ray(synth_root, tmp_path, ray_session):
    """A truncated JPEG fails the Ray-parallel prepare with the worker's error class, sample and path."""
    root = _light_copy(synth_root, tmp_path / "root")
    token, img = _first_front(root)
    data = img.read_bytes()
    img.unlink()
    img.write_bytes(data[: len(data) // 2])
    with pytest.raises(E.CorruptImageError) as e:
        prepare(root, "v1.0-mini", tmp_path / "out", num_workers=2, progress=False)
    assert e.value.sample_token == token and e.value.path == str(img)
    assert not (tmp_path / "out").exists()  # nothing written: shards are only written once every scene succeeded


def test_image_ops_errors(tmp_path):
    from odvla.platform.data.image_ops import decode_resize

    with pytest.raises(E.MissingImageError, match="tok1"):
        decode_resize(tmp_path / "nope.jpg", (8, 8), sample_token="tok1")
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"\xff\xd8" + b"garbage" * 50 + b"\xff\xd9")  # passes the marker check, cannot decode
    with pytest.raises(E.CorruptImageError) as e:
        decode_resize(bad, (8, 8), sample_token="tok2")
    assert e.value.path == str(bad) and "tok2" in str(e.value)


def test_cut_off_jpeg_is_refused_not_decoded_grey(tmp_path):
    """A JPEG cut off mid-scan (the header intact) is a CorruptImageError, from a path and from bytes alike."""
    import io

    from PIL import Image

    from odvla.platform.data.image_ops import decode_resize

    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (90, 160, 3), dtype=np.uint8)).save(buf, "JPEG")
    data = buf.getvalue()
    assert decode_resize(data, (45, 80)).shape == (45, 80, 3)
    cut = tmp_path / "cut.jpg"
    cut.write_bytes(data[: len(data) * 2 // 3])
    for src in (cut, cut.read_bytes()):
        with pytest.raises(E.CorruptImageError, match="end-of-image") as e:
            decode_resize(src, (45, 80), sample_token="tok3")
        assert "tok3" in str(e.value)


def test_pipeline_names_corrupt_image(synth_root, shards_dir, tmp_path, ray_session):
    """A JPEG that passes prepare's marker check but does not decode fails the Ray Data stage, naming it."""
    from odvla.platform.config import load_config
    from odvla.platform.data.pipeline import build_dataset
    from odvla.platform.data.shards import read_split

    root = _light_copy(synth_root, tmp_path / "root")
    row = read_split(shards_dir, "val").slice(0, 1).to_pylist()[0]
    img = root / row["cam_paths"][2]
    img.unlink()
    img.write_bytes(b"\xff\xd8" + bytes(range(256)) * 4 + b"\xff\xd9")
    cfg = load_config(model="tiny", overrides=[f"data.shards={shards_dir}", f"data.dataroot={root}"])
    with pytest.raises(Exception, match=row["sample_token"]) as e:
        build_dataset(cfg.data, cfg.model.vision, "val").take_all()
    assert str(img) in str(e.value)


def test_shard_of_other_schema_version(shards_dir, tmp_path):
    from odvla.platform.config import load_config
    from odvla.platform.data.pipeline import build_dataset
    from odvla.platform.data.shards import read_split

    d = tmp_path / "sh"
    shutil.copytree(shards_dir, d)
    t = pq.read_table(d / "train" / "part-00001.parquet")
    pq.write_table(t.replace_schema_metadata({b"odvla.schema_version": b"0"}), d / "train" / "part-00001.parquet")
    with pytest.raises(E.ShardSchemaError, match="schema version 0") as e:
        read_split(d, "train")
    assert e.value.path.endswith("part-00001.parquet")
    cfg = load_config(model="tiny", overrides=[f"data.shards={d}"])
    with pytest.raises(E.ShardSchemaError, match="part-00001.parquet"):
        build_dataset(cfg.data, cfg.model.vision, "train")
    pq.write_table(pa.table({"x": np.arange(3)}), d / "val" / "part-00000.parquet")
    with pytest.raises(E.ShardSchemaError, match="version none"):
        read_split(d, "val")


def test_unknown_example_token(shards_dir):
    from odvla.platform.config import load_config
    from odvla.platform.data.pipeline import build_dataset

    cfg = load_config(model="tiny", overrides=[f"data.shards={shards_dir}"])
    ex = pa.table({"sample_token": ["no-such-sample"], "task": ["qa"], "question": ["q"], "answer": ["a"]})
    with pytest.raises(E.UnknownSampleError, match="no-such-sample"):
        build_dataset(cfg.data, cfg.model.vision, "train", examples=ex)


def test_cli_prints_one_line_error(tmp_path, capsys):
    from odvla.platform.cli.main import main

    assert main(["prepare", "--dataroot", str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "odvla prepare: error: not a nuScenes dataroot" in err and "Traceback" not in err
