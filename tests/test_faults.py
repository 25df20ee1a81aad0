"""Faults and hostile files: the merge and the sweep store lose nothing, mix nothing, refuse what
safetensors and transformers would refuse, and say what went wrong in one sentence.
docs/faults.md lists these cases; the numbers are issue 12's."""

import json
import logging
import os
import pickle
import re
import shutil
import signal
import subprocess
import sys
import threading
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
import yaml
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM

from soce.errors import CheckpointError
from soce.engine.hf import load_model
from soce.merge import InPlaceSoup, merge_to_disk, open_checkpoint
from soce.merge import disk
from soce.merge.checkpoint import read_header
from soce.pool import Candidate, resolve_pool
from soce.store import SweepStore
from conftest import MICRO_STUDY, one_error_line, sweep_record
from tiny_models import build_tiny_llama

WEIGHTS = [0.5, 0.2, 0.3]


@pytest.fixture(scope="module")
def experts(tmp_path_factory):
    root = tmp_path_factory.mktemp("experts")
    return [build_tiny_llama(root / f"e{i}", seed=20 + i) for i in range(3)]


def soce_merge(soce, tmp_path, experts, out, *extra, **kwargs):
    models = "[" + ",".join(map(str, experts)) + "]"
    weights = [round(1 / len(experts), 6)] * (len(experts) - 1)
    weights.append(round(1 - sum(weights), 6))
    return soce("stage=merge", f"merge.models={models}", f"merge.weights={weights}", f"merge.output={out}", "tracker=none",
                f"hydra.run.dir={tmp_path / 'run'}", *extra, **kwargs)


# --- 1. one merge per output path ----------------------------------------------------------------
def test_a_second_merge_to_the_same_output_is_refused_and_the_first_completes(experts, tmp_path, monkeypatch):
    out = tmp_path / "soup"
    reference = merge_to_disk(experts, WEIGHTS, tmp_path / "reference", shard_size="30KB", progress=False)
    writing, release = threading.Event(), threading.Event()
    real_write = disk._Streamer.write_tensor

    def write_slowly(self, *args):
        if threading.current_thread() is first:  # the first merge waits mid-write; the second does not
            writing.set()
            release.wait()
        return real_write(self, *args)

    monkeypatch.setattr(disk._Streamer, "write_tensor", write_slowly)
    first_error = []
    first = threading.Thread(target=lambda: _catch(first_error, merge_to_disk, experts, WEIGHTS, out, shard_size="30KB", progress=False))
    first.start()
    assert writing.wait(timeout=600)  # the first merge is mid-write (a bound only against a hang)
    try:
        with pytest.raises(CheckpointError, match=f"merge.output {out} is being written by another merge"):
            merge_to_disk(experts[::-1], WEIGHTS, out, shard_size="30KB", overwrite=True, progress=False)
    finally:
        release.set()
        first.join()
    assert not first_error
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in reference.iterdir())
    for f in reference.iterdir():  # one complete soup: the first merge's
        assert (out / f.name).read_bytes() == f.read_bytes() or f.name == "mergekit.yaml"
    assert not list(tmp_path.glob(".soup*"))  # no partial output and no lock left


def _catch(errors, fn, *args, **kwargs):
    try:
        fn(*args, **kwargs)
    except BaseException as err:  # noqa: BLE001
        errors.append(err)


# --- 2, 3. the store keeps every record and moves aside what is not one ---------------------------
def _record(i):
    return sweep_record([i / 20, 1 - i / 20], i)


def _store_with(tmp_path, bad: bytes, at: int = 7, n: int = 13) -> list[bytes]:
    store = SweepStore(tmp_path)
    for i in range(n):
        store.append(_record(i))
    store.close()
    lines = (tmp_path / "sweep.jsonl").read_bytes().splitlines(keepends=True)
    (tmp_path / "sweep.jsonl").write_bytes(b"".join(lines[:at] + [bad + b"\n"] + lines[at:]))
    return lines


@pytest.mark.parametrize("bad", [b'{"kind": "sweep", garbage', b"{}", b"[1, 2]", b"\xff\xfe not utf-8 \x80", b'"a string"',
                                 b'{"experts": ["a"], "weights": [0.5, 0.5], "split": "dev", "scores": {}}'])
def test_a_line_that_is_not_a_record_is_moved_aside_and_every_record_kept(tmp_path, caplog, bad):
    lines = _store_with(tmp_path, bad)
    with caplog.at_level(logging.WARNING, logger="soce"):
        store = SweepStore(tmp_path)
    assert len(store) == 13 and store.get(["a", "b"], [12 / 20, 8 / 20], "dev")["objective"] == 12
    assert (tmp_path / "sweep.jsonl").read_bytes() == b"".join(lines)  # the records before and after it
    assert (tmp_path / "sweep.jsonl.rejected").read_bytes().startswith(b"# sweep.jsonl line 8: ")
    assert (tmp_path / "sweep.jsonl.rejected").read_bytes().endswith(b"\n" + bad + b"\n")
    assert "1 line that is not a valid sweep record (line 8: " in caplog.text and "13 records around it are kept" in caplog.text
    store.append(_record(13))  # the store still takes records, in its own file
    store.close()
    assert len(SweepStore(tmp_path)) == 14


def test_only_a_torn_last_line_is_trimmed(tmp_path, caplog):
    lines = _store_with(tmp_path, b"not json", at=3)
    with (tmp_path / "sweep.jsonl").open("ab") as f:
        f.write(b'{"kind": "sweep", "experts": ["a", "b"], "weights": [0.2')  # the point in flight when killed
    with caplog.at_level(logging.WARNING, logger="soce"):
        store = SweepStore(tmp_path)
    assert len(store) == 13 and (tmp_path / "sweep.jsonl").read_bytes() == b"".join(lines)
    assert "dropping an unfinished last record" in caplog.text and "(line 4: not JSON) moved" in caplog.text


def test_a_reader_skips_but_never_changes_another_writers_file(tmp_path, caplog):
    shard = SweepStore(tmp_path, 0, 2)
    for i in range(3):
        shard.append(_record(i))
    with (tmp_path / "sweep.shard-0-of-2.jsonl").open("ab") as f:
        f.write(b"{}\n")
    shard.append(_record(3))
    before = (tmp_path / "sweep.shard-0-of-2.jsonl").read_bytes()
    with caplog.at_level(logging.WARNING, logger="soce"):
        other = SweepStore(tmp_path, 1, 2)
    assert len(other) == 4 and (tmp_path / "sweep.shard-0-of-2.jsonl").read_bytes() == before
    assert "skipping 1 line that is not a valid sweep record (line 4: no 'kind')" in caplog.text


# --- 4. headers validated as strictly as safetensors does ----------------------------------------
def _raw_safetensors(path: Path, header: dict, data: bytes) -> Path:
    raw = json.dumps(header).encode()
    path.write_bytes(len(raw).to_bytes(8, "little") + raw + data)
    return path


@pytest.mark.parametrize("header, data, message", [
    ({"t": {"dtype": "F32", "shape": [-2, -3], "data_offsets": [0, 24]}}, bytes(24), r"shape \[-2, -3\] .*integers >= 0"),
    ({"t": {"dtype": "F32", "shape": [2.0, 3], "data_offsets": [0, 24]}}, bytes(24), "integers >= 0"),
    ({"a": {"dtype": "F32", "shape": [6], "data_offsets": [0, 24]}, "b": {"dtype": "F32", "shape": [6], "data_offsets": [0, 24]}},
     bytes(24), "overlaps the tensor before it"),
    ({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}, "b": {"dtype": "F32", "shape": [2], "data_offsets": [16, 24]}},
     bytes(24), "leaves a gap of 8 bytes"),
    ({"t": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}, bytes(12), "4 bytes after its last tensor"),
    ({"t": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}, bytes(12), "truncated"),
    ({"t": {"dtype": "F32", "shape": [2], "data_offsets": [8, 0]}}, bytes(8), "-8 bytes for shape"),
])
def test_a_header_safetensors_rejects_is_refused(tmp_path, header, data, message):
    f = _raw_safetensors(tmp_path / "bad.safetensors", header, data)
    with pytest.raises(CheckpointError, match=message):
        read_header(f)
    with pytest.raises(Exception):  # safetensors itself refuses the same file
        with safe_open(f, "pt") as h:
            [h.get_tensor(k) for k in h.keys()]


def test_a_valid_header_with_an_empty_tensor_is_read(tmp_path):
    save_file({"a": torch.ones(2, 3), "empty": torch.ones(0, 3), "b": torch.zeros(4)}, tmp_path / "ok.safetensors")
    assert {n: t.shape for n, t in read_header(tmp_path / "ok.safetensors").items()} == {"a": (2, 3), "empty": (0, 3), "b": (4,)}


# --- 5. every model's dtypes are checked; mixed dtypes are said -----------------------------------
def _retype(src: Path, dst: Path, dtype: torch.dtype, every: bool = False) -> Path:
    shutil.copytree(src, dst)
    for f in sorted(dst.glob("*.safetensors"))[: None if every else 1]:
        tensors = load_file(f)
        name = sorted(tensors)[0]
        for n in (tensors if every else [name]):
            tensors[n] = tensors[n].to(dtype)
        save_file(tensors, f, metadata={"format": "pt"})
    return dst


def test_an_integer_tensor_in_any_model_is_refused(experts, tmp_path):
    ints = _retype(experts[1], tmp_path / "ints", torch.int32)
    with pytest.raises(CheckpointError, match=r"ints: tensor .* is I32: only floating-point tensors can be averaged"):
        merge_to_disk([experts[0], ints], [0.5, 0.5], tmp_path / "soup", progress=False)
    assert not (tmp_path / "soup").exists()


def test_mixed_input_dtypes_are_merged_and_said(experts, tmp_path, caplog):
    halves = _retype(experts[1], tmp_path / "bf16", torch.bfloat16, every=True)
    with caplog.at_level(logging.WARNING, logger="soce"):
        merge_to_disk([experts[0], halves], [0.5, 0.5], tmp_path / "soup", progress=False)
    assert "the models' dtypes differ" in caplog.text and "BF16 in" in caplog.text and str(halves) in caplog.text
    assert f"as {experts[0]} has it" in caplog.text
    assert {t.dtype for t in open_checkpoint(tmp_path / "soup").tensors.values()} == {torch.float32}


# --- 6. the cast to the output dtype must not overflow ---------------------------------------------
def test_a_value_the_output_dtype_cannot_hold_is_refused(experts, tmp_path):
    big = shutil.copytree(experts[1], tmp_path / "big")
    f = sorted(big.glob("*.safetensors"))[0]
    tensors = load_file(f)
    name = sorted(tensors)[0]
    tensors[name].view(-1)[0] = 3e5  # finite in float32, beyond float16's 65504
    save_file(tensors, f, metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match=rf"tensor {name!r} has the value 150000, which float16 cannot hold .*the value 300000 comes from .*big\): merge.dtype=float32"):
        merge_to_disk([experts[0], big], [0.5, 0.5], tmp_path / "soup", dtype="float16", progress=False)
    assert not (tmp_path / "soup").exists() and not list(tmp_path.glob(".soup*"))
    merge_to_disk([experts[0], big], [0.5, 0.5], tmp_path / "soup", dtype="bfloat16", progress=False)  # bf16 holds it

    model = AutoModelForCausalLM.from_pretrained(experts[0], dtype=torch.float16)
    soup = InPlaceSoup(model, [experts[0], big])
    with pytest.raises(CheckpointError, match=f"parameter {name!r} .* overflows the model's float16"):
        soup.apply([0.5, 0.5])


# --- 7. one rule decides which files are a model's weights -----------------------------------------
def test_soce_and_transformers_read_the_same_weights(experts, tmp_path):
    a, b = experts[0], experts[1]
    odd = shutil.copytree(a, tmp_path / "odd")
    for f in odd.glob("model*"):
        f.unlink()
    save_file(load_file(_single(a, tmp_path / "a")), odd / "model.safetensors", metadata={"format": "pt"})
    (odd / "model.safetensors.index.json").write_text(json.dumps(  # another model's weights, beside its own
        {"metadata": {}, "weight_map": {n: f"../{b.name}/{f}" for n, f in _weight_map(b).items()}}))
    ours = open_checkpoint(odd)
    theirs = AutoModelForCausalLM.from_pretrained(odd).state_dict()
    assert {t.file.name for t in ours.tensors.values()} == {"model.safetensors"}
    embed = ours.tensors["model.embed_tokens.weight"]
    assert torch.equal(load_file(embed.file)[embed.name], theirs[embed.name])

    (odd / "model.safetensors").unlink()  # now the index decides, and it points outside the directory
    with pytest.raises(CheckpointError, match=r"names '\.\./e1/.*not a safetensors file in the model directory"):
        open_checkpoint(odd)
    with pytest.raises(CheckpointError, match=r"pool model 'odd': .*outside|pool model 'odd': .*not a safetensors file in the model"):
        load_model(Candidate("odd", path=str(odd)))


def test_transformers_weights_in_config_is_followed_and_kept_inside(experts, tmp_path):
    odd = shutil.copytree(experts[0], tmp_path / "odd")
    config = json.loads((odd / "config.json").read_text())
    (odd / "config.json").write_text(json.dumps({**config, "transformers_weights": f"../{experts[1].name}/model.safetensors"}))
    with pytest.raises(CheckpointError, match="transformers_weights=.* is outside the model directory"):
        open_checkpoint(odd)

    inside = shutil.copytree(experts[1], tmp_path / "inside")  # its own single file, named by its config
    save_file(load_file(_single(experts[1], tmp_path / "single")), inside / "weights.safetensors", metadata={"format": "pt"})
    for f in inside.glob("model*"):
        f.unlink()
    (inside / "config.json").write_text(json.dumps({**config, "transformers_weights": "weights.safetensors"}))
    assert {t.file.name for t in open_checkpoint(inside).tensors.values()} == {"weights.safetensors"}
    soup = merge_to_disk([inside, experts[0]], [0.5, 0.5], tmp_path / "soup", progress=False)
    assert "transformers_weights" not in json.loads((soup / "config.json").read_text())  # the soup's weights are its own
    AutoModelForCausalLM.from_pretrained(soup)


def test_a_zoo_model_with_an_extra_file_is_not_intact(zoo_cache, tmp_path):
    from soce.zoo.family import _is_intact, build_family

    family = build_family("micro", zoo_cache / "zoo", progress=False)
    model = shutil.copytree(next(iter(family.candidates.values())), tmp_path / "model")
    assert _is_intact(model)
    (model / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"x": "../other/model.safetensors"}}))
    assert not _is_intact(model)


def _weight_map(model: Path) -> dict[str, str]:
    return json.loads((model / "model.safetensors.index.json").read_text())["weight_map"]


def _single(model: Path, into: Path) -> Path:
    into.mkdir()
    tensors = {}
    for f in sorted(model.glob("model-*.safetensors")):
        tensors.update(load_file(f))
    save_file(tensors, into / "model.safetensors", metadata={"format": "pt"})
    return into / "model.safetensors"


# --- 8. mergekit.yaml reads back as written --------------------------------------------------------
def test_mergekit_yaml_round_trips_any_path(experts, tmp_path):
    odd = [shutil.copytree(e, tmp_path / name) for e, name in zip(experts, ["a #b", "c: d", "'q' \"r\" [s]"])]
    out = merge_to_disk(odd, WEIGHTS, tmp_path / "soup", progress=False)
    recipe = yaml.safe_load((out / "mergekit.yaml").read_text())
    assert [m["model"] for m in recipe["models"]] == [str(p) for p in odd]
    assert [m["parameters"]["weight"] for m in recipe["models"]] == WEIGHTS
    assert recipe["merge_method"] == "linear" and recipe["parameters"] == {"normalize": False}


# --- 9. the same model twice is said ---------------------------------------------------------------
def test_the_same_model_twice_is_warned_about(experts, tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="soce"):
        merge_to_disk([experts[0], experts[1], Path(str(experts[0]) + "/.")], WEIGHTS, tmp_path / "soup", progress=False)
        resolve_pool([Candidate("m1", path=str(experts[0])), Candidate("m2", path=str(experts[1])),
                      Candidate("m3", path=str(experts[0]))], ["m1", "m2", "m3"], "the table")
        resolve_pool([Candidate("h1", hub_id="org/x"), Candidate("h2", hub_id="org/x")], ["h1", "h2"], "the table")
    assert "merge.models[0] and merge.models[2] are the same model" in caplog.text
    assert "pool model 'm1' and pool model 'm3' are the same model" in caplog.text
    assert "pool model 'h1' and pool model 'h2' are the same model (org/x)" in caplog.text


# --- 10. faults of the file system and hostile files: one sentence, no partial output -------------
@contextmanager
def mounted_tmpfs(path: Path, options: str):
    """A tmpfs at `path` (as root); skips the test where mounting is not allowed."""
    path.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)],
                                           capture_output=True).returncode != 0:
        pytest.skip("mounting a tmpfs needs root")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=True)


def test_a_full_disk_is_one_error_line_and_frees_its_space(soce, experts, tmp_path):
    big = [build_tiny_llama(tmp_path / f"big{i}", seed=i, hidden=256, vocab_size=4096) for i in range(2)]
    if os.geteuid() == 0:
        with mounted_tmpfs(tmp_path / "disk", "size=2m") as disk_dir:  # the soup needs about 10 MB
            r = soce_merge(soce, tmp_path, big, disk_dir / "soup")
            line = one_error_line(r)
            assert "No space left on device" in line and str(disk_dir) in line and "free some space" in line
            assert list(disk_dir.iterdir()) == []  # the partial soup is gone: the disk is free again
    else:  # a file-size limit instead of a small disk
        import resource

        r = soce_merge(soce, tmp_path, big, tmp_path / "soup",
                       preexec=lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, 1 << 20)))
        assert "File too large" in one_error_line(r)
        assert not list(tmp_path.glob(".soup*")) and not (tmp_path / "soup").exists()


def test_a_read_only_output_directory_is_one_error_line(soce, experts, tmp_path):
    if os.geteuid() == 0:
        with mounted_tmpfs(tmp_path / "ro", "ro,size=1m") as ro:
            line = one_error_line(soce_merge(soce, tmp_path, experts, ro / "soup"))
            assert "Read-only file system" in line and str(ro) in line
    else:
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o555)
        line = one_error_line(soce_merge(soce, tmp_path, experts, ro / "soup"))
        assert "Permission denied" in line and str(ro) in line


@pytest.mark.parametrize("kind", ["file", "symlink", "directory"])
def test_overwrite_replaces_only_a_soup(soce, experts, tmp_path, kind):
    out = tmp_path / "target"
    keep = tmp_path / "keep"
    keep.mkdir()
    (keep / "data.txt").write_text("precious")
    if kind == "file":
        out.write_text("precious")
    elif kind == "symlink":
        out.symlink_to(keep)
    else:
        shutil.copytree(keep, out)
    line = one_error_line(soce_merge(soce, tmp_path, experts, out, "merge.overwrite=true"))
    assert f"merge.output {out} is" in line and "replaces only a soup soce wrote" in line
    assert (keep / "data.txt").read_text() == "precious" and (out.read_text() if kind == "file" else (out / "data.txt").read_text()) == "precious"
    assert not list(tmp_path.glob(".target*"))


class _Payload:
    """Unpickling this runs code: it would create a file."""

    def __init__(self, flag: Path) -> None:
        self.flag = flag

    def __reduce__(self):
        return (open, (str(self.flag), "w"))


def test_a_pickled_candidate_is_refused_unopened(experts, tmp_path):
    flag = tmp_path / "unpickled"
    model = tmp_path / "pickled"
    model.mkdir()
    shutil.copy(experts[0] / "config.json", model / "config.json")
    (model / "pytorch_model.bin").write_bytes(pickle.dumps({"w": _Payload(flag)}))
    with pytest.raises(CheckpointError) as err:
        load_model(Candidate("pickled", path=str(model)))
    assert "pool model 'pickled'" in str(err.value) and "pytorch_model.bin: pickled weights, which soce never loads" in str(err.value)
    assert "\n" not in str(err.value) and not flag.exists()
    (model / "model.safetensors").write_bytes(pickle.dumps({"w": _Payload(flag)}))  # a pickle named like safetensors
    with pytest.raises(CheckpointError, match="model.safetensors: .*safetensors"):
        load_model(Candidate("pickled", path=str(model)))
    assert not flag.exists()


# --- 11. issue 25: a scheduler's SIGTERM, unwritable directories, a full store, cut-short files ------
def test_sigterm_mid_merge_removes_the_partial_soup_and_its_lock_and_says_so(tmp_path):
    big = [build_tiny_llama(tmp_path / f"big{i}", seed=i, hidden=512, vocab_size=16000) for i in range(3)]
    out = tmp_path / "soup"
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    proc = subprocess.Popen([sys.executable, "-m", "soce", "stage=merge", f"merge.models=[{','.join(map(str, big))}]",
                             "merge.weights=[0.4,0.3,0.3]", f"merge.output={out}", "merge.shard_size=5MB", "tracker=none",
                             f"hydra.run.dir={tmp_path / 'run'}"], cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    partial = tmp_path / ".soup.partial"
    while proc.poll() is None and not any(partial.glob("*.safetensors")):
        pass  # no sleep: the merge takes about a second once it has started
    assert proc.poll() is None, "the merge ended before it could be stopped"
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate()
    assert proc.returncode == 143 and "Traceback" not in err
    assert "error: stopped by SIGTERM" in err and "an unfinished soup was removed" in err
    assert not partial.exists() and not (tmp_path / ".soup.lock").exists() and not out.exists()


def test_a_run_directory_that_cannot_be_written_is_one_error_line(soce, tmp_path):
    with mounted_tmpfs(tmp_path / "ro", "ro,size=1m") as ro:
        line = one_error_line(soce("benchmark=demo", "pool=all", "tracker=none", f"hydra.run.dir={ro / 'run'}"))
    assert f"the run directory {ro / 'run'} cannot be written (Read-only file system): choose another with hydra.run.dir" in line


SWEEP = [*MICRO_STUDY, "tracker=none", "stage=sweep"]


@pytest.mark.slow
def test_a_store_that_fills_its_disk_is_one_error_line_and_resumes_elsewhere(soce, zoo_cache, tmp_path):
    args = [*SWEEP, f"pool.cache_dir={zoo_cache}", f"hydra.run.dir={tmp_path / 'run'}"]
    with mounted_tmpfs(tmp_path / "disk", "size=16k") as disk_dir:
        line = one_error_line(soce(*args, f"sweep.store={disk_dir}"))
        assert f"{disk_dir / 'sweep.jsonl'}: No space left on device: free some space" in line and "resumes" in line
        shutil.copy(disk_dir / "sweep.jsonl", tmp_path / "sweep.jsonl")
    kept = (tmp_path / "sweep.jsonl").read_bytes().split(b"\n")
    whole = sum(1 for raw in kept[:-1] if json.loads(raw))
    assert whole >= 3  # the points stored before the disk filled, every one a whole record
    r = soce(*args, f"sweep.store={tmp_path}")
    assert r.returncode == 0, r.stderr[-2000:]
    assert f"sweep: 37 points on dev ({whole} already in the store)" in r.stdout


def test_cut_short_files_are_made_again_not_a_traceback(study, zoo_cache, tmp_path, caplog):
    args = [*SWEEP[:-1], f"pool.cache_dir={zoo_cache}", "search.budget=2", "report.line_points=0"]
    study(*args, "stage=soup")
    results = tmp_path / "run" / "results.json"
    results.write_text(results.read_text()[:100])  # a full disk or a kill mid-write
    r = study(*args, "stage=soup")
    assert "results.json is not the file it wrote (edited by hand, or cut short)" in r.log
    assert list((tmp_path / "run" / "superseded").glob("*/results.json"))[0].read_text() == results.read_text()[:100]  # kept
    assert json.loads(results.read_text())["search"] == "grid"
    saved = {path: path.read_text() for path in (zoo_cache / "evals").glob("*.json")}  # the study's among them
    for path, text in saved.items():
        path.write_text(text[:50])
    try:
        r = study(*args, "stage=analyze", run_dir=tmp_path / "again")
        assert "not a cached evaluation (JSONDecodeError): evaluating micro-json again" in r.log
    finally:
        for path, text in saved.items():
            path.write_text(text)


# --- 12. issue 36: inputs that no evaluation can use, refused before any starts -------------------
@pytest.mark.parametrize("override, message", [
    ("pool.models=[]", "pool.models=[] names no model: list the candidates"),
    ("selection=manual 'selection.models=[]'", "selection.models=[] names no expert"),
    ("benchmark=table benchmark.path=x.csv 'benchmark.category_sizes=[1,2]'",
     "benchmark.category_sizes=[1, 2]: a mapping of each category to its number of examples"),
    ("sweep.store=a_file", "sweep.store=a_file is a file: the store is a directory"),
])
def test_an_input_no_evaluation_can_use_is_one_error_line_naming_its_key(soce, tmp_path, override, message):
    import shlex

    (tmp_path / "a_file").write_text("not a store")
    extra = ["pool=all"] if override.startswith("pool.models") else []
    line = one_error_line(soce(*extra, *shlex.split(override), "tracker=none", f"hydra.run.dir={tmp_path / 'run'}"))
    assert message in line
    assert not (tmp_path / "run" / "scores.csv").exists()  # before anything was evaluated


def test_a_push_in_offline_mode_is_refused_before_the_study(soce, tmp_path):
    line = one_error_line(soce("benchmark=demo", "pool=all", "soup.push_to_hub=me/soup", "tracker=none",
                               env={"HF_HUB_OFFLINE": "1", "HF_TOKEN": "hf_test", "HF_HOME": str(tmp_path / "hf")}))
    assert "soup.push_to_hub=me/soup: the Hugging Face Hub is in offline mode here (HF_HUB_OFFLINE=1)" in line


@pytest.mark.parametrize("selection", ["soce", "topk"])
def test_a_pool_model_that_cannot_be_souped_is_refused_before_any_candidate_is_evaluated(study, zoo_cache, tmp_path, selection):
    from soce.errors import CheckpointError
    from soce.zoo.family import build_family

    family = build_family("micro", zoo_cache / "zoo", progress=False)
    odd = build_tiny_llama(tmp_path / "odd", seed=1, vocab_size=family_vocab(family) + 8)  # another tokenizer's embeddings
    models = [*(f"{{name: {n}, path: '{p}'}}" for n, p in family.candidates.items()), f"{{name: odd, path: '{odd}'}}"]
    with pytest.raises(CheckpointError, match=rf"pool model 'odd' \({re.escape(str(odd))}\): .* differs from .*leave the odd one out"):
        study("benchmark=toy_fc", "benchmark.backend=direct", "benchmark.per_category=20", "pool=all",
              f"pool.models=[{','.join(models)}]", f"selection={selection}", f"pool.cache_dir={tmp_path / 'cache'}",
              "tracker=none")
    assert not (tmp_path / "cache" / "evals").exists() or not any((tmp_path / "cache" / "evals").iterdir())  # none evaluated


def family_vocab(family) -> int:
    return json.loads((family.base / "config.json").read_text())["vocab_size"]


def test_a_lock_wait_says_what_it_waits_for_and_keeps_saying_it(tmp_path, caplog):
    """Another process's lock (here another open file description of this one) is waited for
    aloud: what for at once, how long every `every` seconds, and when it is over."""
    import fcntl
    import logging
    import threading
    import time

    from soce.locks import wait_for_lock

    path = tmp_path / "family.lock"
    holder = path.open("w")
    fcntl.flock(holder, fcntl.LOCK_EX)
    released = threading.Event()

    def release_once_waited_on():
        while "still waiting" not in caplog.text:  # held until the wait has said so: no timing assumed
            time.sleep(0.05)
        holder.close()
        released.set()

    threading.Thread(target=release_once_waited_on, daemon=True).start()
    caplog.set_level(logging.INFO, logger="soce-test")
    with path.open("w") as mine:
        wait_for_lock(mine, "the default family, which another process is building", logging.getLogger("soce-test"), every=0.3)
        assert released.is_set()
    assert f"waiting for the default family, which another process is building ({path} is locked by another process)" \
        in caplog.text
    assert "still waiting for the default family, which another process is building: " in caplog.text
    assert "done waiting for the default family, which another process is building, after " in caplog.text
