import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM

from soce.errors import SoceError
from soce.merge import InPlaceSoup, merge_to_disk, open_checkpoint
from soce.merge.checkpoint import check_compatible
from conftest import accelerate_launch
from tiny_models import build_tiny_llama

WEIGHTS = [0.5, 0.2, 0.3]


def state_dict(path: Path) -> dict[str, torch.Tensor]:
    out = {}
    for f in sorted(path.glob("*.safetensors")):
        out.update(load_file(f))
    return out


def bf16_ulp(x: torch.Tensor) -> torch.Tensor:
    """The spacing of bfloat16 numbers at |x| (8 significant bits)."""
    tiny = torch.finfo(torch.bfloat16).tiny
    return torch.exp2(torch.floor(torch.log2(x.abs().clamp_min(tiny))) - 7)


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    """Three experts per variant: bf16 and fp32, tied and untied embeddings, several shards each."""
    root = tmp_path_factory.mktemp("zoo")
    variants = {}
    for dtype in (torch.bfloat16, torch.float32):
        for tie in (False, True):
            key = (str(dtype).removeprefix("torch."), tie)
            variants[key] = [build_tiny_llama(root / f"{key[0]}-{tie}-{i}", seed=10 + i, dtype=dtype, tie=tie) for i in range(3)]
    return variants


@pytest.mark.parametrize("dtype, tie", [("bfloat16", False), ("bfloat16", True), ("float32", False), ("float32", True)])
def test_merge_equals_a_float64_reference(zoo, tmp_path, dtype, tie):
    experts = zoo[(dtype, tie)]
    assert len(list(experts[0].glob("*.safetensors"))) > 1  # the inputs are sharded
    out = merge_to_disk(experts, WEIGHTS, tmp_path / "soup", shard_size="30KB", progress=False)
    soup, refs = state_dict(out), [state_dict(e) for e in experts]
    assert set(soup) == set(refs[0]) and ("lm_head.weight" in soup) == (not tie)
    for name, tensor in soup.items():
        assert tensor.dtype == refs[0][name].dtype
        reference = sum(w * r[name].double() for w, r in zip(WEIGHTS, refs))
        error = (tensor.double() - reference).abs()
        # float32 accumulation: a few roundings at float32's precision of the terms' magnitude
        # (this only shows where the terms cancel, e.g. to an exact 0.0) ...
        accumulation = 4 * torch.finfo(torch.float32).eps * sum(w * r[name].double().abs() for w, r in zip(WEIGHTS, refs))
        # ... then one rounding to bfloat16: within one unit in the last place.
        last_place = bf16_ulp(reference) if dtype == "bfloat16" else 0
        assert (error <= last_place + accumulation).all(), name
    model = AutoModelForCausalLM.from_pretrained(out)
    assert model.dtype == getattr(torch, dtype)
    assert model.config.tie_word_embeddings == tie


def test_output_directory_layout(zoo, tmp_path):
    experts = zoo[("bfloat16", False)]
    out = merge_to_disk(experts, WEIGHTS, tmp_path / "soup", shard_size="30KB", config_from=experts[1], progress=False)
    index = json.loads((out / "model.safetensors.index.json").read_text())
    files = sorted(set(index["weight_map"].values()))
    assert len(files) > 1 and files == [f"model-{i:05d}-of-{len(files):05d}.safetensors" for i in range(1, len(files) + 1)]
    assert index["metadata"]["total_size"] == sum(t.numel() * 2 for t in state_dict(out).values())
    for f in files:  # each shard within the limit, unless one tensor alone is larger
        tensors = load_file(out / f)
        assert sum(t.numel() * 2 for t in tensors.values()) <= 30_000 or len(tensors) == 1
    assert json.loads((out / "config.json").read_text())["dtype"] == "bfloat16"
    assert (out / "tokenizer.json").read_bytes() == (experts[1] / "tokenizer.json").read_bytes()
    recipe = yaml.safe_load((out / "mergekit.yaml").read_text())
    assert recipe["merge_method"] == "linear" and recipe["dtype"] == "bfloat16"
    assert [(m["model"], m["parameters"]["weight"]) for m in recipe["models"]] == list(zip(map(str, experts), WEIGHTS))
    assert not list(tmp_path.glob(".*"))  # no partial directory left behind


def test_the_merge_says_its_size_as_a_person_reads_it(zoo, tmp_path, caplog):
    import logging

    with caplog.at_level(logging.INFO, logger="soce"):
        merge_to_disk(zoo[("float32", False)], WEIGHTS, tmp_path / "soup", shard_size="1GB", progress=False)
    assert f"soup of 3 models written to {tmp_path / 'soup'} (1 shard, " in caplog.text and " kB) in " in caplog.text


def test_output_dtype_is_configurable(zoo, tmp_path):
    out = merge_to_disk(zoo[("float32", False)], WEIGHTS, tmp_path / "soup", dtype="bfloat16", progress=False)
    assert {t.dtype for t in state_dict(out).values()} == {torch.bfloat16}


@pytest.mark.parametrize("dtype, tie", [("bfloat16", False), ("bfloat16", True), ("float32", True)])
@pytest.mark.parametrize("chunked", [False, True])
def test_in_place_soup_equals_the_disk_merge_bit_for_bit(zoo, tmp_path, monkeypatch, dtype, tie, chunked):
    experts = zoo[(dtype, tie)]
    if chunked:  # small, unaligned chunks on both paths: elementwise arithmetic, the same bits
        monkeypatch.setattr("soce.merge.inplace.CPU_CHUNK", 100)
    model = AutoModelForCausalLM.from_pretrained(experts[2], dtype=getattr(torch, dtype))
    soup = InPlaceSoup(model, experts)
    for i, weights in enumerate([WEIGHTS, [0.1, 0.1, 0.8]]):  # the same live model, two points
        soup.apply(weights)
        disk = state_dict(merge_to_disk(experts, weights, tmp_path / f"soup{i}", chunk_bytes=300 if chunked else 1 << 20, progress=False))
        live = model.state_dict()
        for name, tensor in disk.items():
            assert torch.equal(live[name], tensor), name
        if tie:
            assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()


def test_normalize_rescales_weights(zoo, tmp_path):
    experts = zoo[("float32", False)]
    a = merge_to_disk(experts, [5, 2, 3], tmp_path / "a", normalize=True, progress=False)
    b = merge_to_disk(experts, WEIGHTS, tmp_path / "b", progress=False)
    for name, t in state_dict(a).items():
        torch.testing.assert_close(t, state_dict(b)[name], rtol=0, atol=1e-7)


# --- bad input: a clear error, and nothing at the output path ----------------------------------
def copy_expert(src: Path, dst: Path) -> Path:
    import shutil

    return Path(shutil.copytree(src, dst))


def first_shard(path: Path) -> Path:
    return sorted(path.glob("model-*.safetensors"))[0]


def break_truncate(e: Path) -> str:
    f = first_shard(e)
    f.write_bytes(f.read_bytes()[:-100])
    return "truncated"


def break_garbage(e: Path) -> str:
    first_shard(e).write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all}")
    return "not a readable safetensors file"


def break_config(e: Path) -> str:
    (e / "config.json").unlink()
    return "no config.json"


def break_architecture(e: Path) -> str:
    config = json.loads((e / "config.json").read_text())
    config["architectures"] = ["MistralForCausalLM"]
    (e / "config.json").write_text(json.dumps(config))
    return "architectures ['MistralForCausalLM'] differs"


def break_nan(e: Path) -> str:
    f = first_shard(e)
    tensors = load_file(f)
    name = sorted(tensors)[0]
    tensors[name][0, 0] = float("nan") if tensors[name].dim() == 2 else tensors[name][0]
    tensors[name].view(-1)[0] = float("nan")
    save_file(tensors, f, metadata={"format": "pt"})
    return f"tensor {name!r} has NaN or Inf values"


@pytest.mark.parametrize("breaker", [break_truncate, break_garbage, break_config, break_architecture, break_nan])
def test_broken_inputs(zoo, tmp_path, breaker):
    experts = list(zoo[("float32", False)])
    experts[1] = copy_expert(experts[1], tmp_path / "broken")
    message = breaker(experts[1])
    with pytest.raises(SoceError) as err:
        merge_to_disk(experts, WEIGHTS, tmp_path / "soup", progress=False)
    assert message in str(err.value) and "broken" in str(err.value)
    assert not (tmp_path / "soup").exists() and not (tmp_path / ".soup.partial").exists()


def test_nonfinite_inputs_are_allowed_when_asked(zoo, tmp_path):
    experts = list(zoo[("float32", False)])
    experts[1] = copy_expert(experts[1], tmp_path / "broken")
    break_nan(experts[1])
    merge_to_disk(experts, WEIGHTS, tmp_path / "soup", allow_nonfinite=True, progress=False)
    assert any(torch.isnan(t).any() for t in state_dict(tmp_path / "soup").values())


@pytest.mark.parametrize(
    "other, message",
    [
        ({"vocab_size": 130}, "vocab_size 130 differs from"),
        ({"hidden": 48}, "has shape"),
    ],
)
def test_incompatible_models(zoo, tmp_path, other, message):
    odd = build_tiny_llama(tmp_path / "odd", seed=3, **other)
    with pytest.raises(SoceError, match=message):
        merge_to_disk([zoo[("float32", False)][0], odd], [0.5, 0.5], tmp_path / "soup", progress=False)
    assert not (tmp_path / "soup").exists()


@pytest.mark.parametrize("dtype, name", [
    (torch.uint16, "U16"), (torch.uint32, "U32"), (torch.uint64, "U64"), (torch.float8_e4m3fn, "F8_E4M3"),
    (torch.float8_e5m2, "F8_E5M2"), (torch.float8_e8m0fnu, "F8_E8M0"), (torch.int16, "I16"), (torch.bool, "BOOL"),
    (torch.complex64, "C64"),
])
def test_every_safetensors_dtype_is_read(tmp_path, dtype, name):
    from soce.merge.checkpoint import TensorReader, read_header

    tensor = torch.arange(12, dtype=torch.float32).reshape(3, 4).to(dtype)
    save_file({"t": tensor}, tmp_path / "x.safetensors")
    info = read_header(tmp_path / "x.safetensors")["t"]
    assert info.dtype == dtype and info.shape == (3, 4)
    raw = (tmp_path / "x.safetensors").read_bytes()
    assert json.loads(raw[8:8 + int.from_bytes(raw[:8], "little")])["t"]["dtype"] == name  # the file names it so
    reader = TensorReader(info.nbytes)
    assert torch.equal(reader.read(info).view(torch.uint8), tensor.view(torch.uint8))
    reader.close()


def test_an_unreadable_dtype_is_refused_by_name_and_integers_are_not_averaged(zoo, tmp_path):
    from soce.errors import CheckpointError
    from soce.merge.checkpoint import read_header

    header = json.dumps({"t": {"dtype": "F4", "shape": [2], "data_offsets": [0, 1]}}).encode()
    (tmp_path / "f4.safetensors").write_bytes(len(header).to_bytes(8, "little") + header + b"\0")
    with pytest.raises(CheckpointError, match="tensor 't' has dtype F4, which soce cannot read") as err:
        read_header(tmp_path / "f4.safetensors")
    assert "corrupt" not in str(err.value)

    expert = copy_expert(zoo[("float32", False)][0], tmp_path / "ints")
    f = first_shard(expert)
    tensors = load_file(f)
    name = sorted(tensors)[0]
    tensors[name] = tensors[name].to(torch.uint16)
    save_file(tensors, f, metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match=f"tensor {name!r} is U16: only floating-point tensors can be averaged"):
        merge_to_disk([expert, zoo[("float32", False)][1]], [0.5, 0.5], tmp_path / "soup", progress=False)


def test_tensor_sets_must_match(zoo, tmp_path):
    untied, tied = zoo[("float32", False)][0], zoo[("float32", True)][0]
    with pytest.raises(SoceError, match=r"has extra tensor 'lm_head.weight'|lacks tensor 'lm_head.weight'"):
        check_compatible([open_checkpoint(tied), open_checkpoint(untied)])


@pytest.mark.parametrize(
    "weights, message",
    [
        ([0.5, 0.5], "weights has 2 values for 3 models"),
        ([0.5, -0.2, 0.7], "weights[1]=-0.2 is negative"),
        ([0.5, float("nan"), 0.5], "weights[1]=nan is not finite"),
        ([0.5, 0.5, 0.5], "weights sum to 1.5, not 1 (normalize=True rescales them)"),
    ],
)
def test_bad_weights(zoo, tmp_path, weights, message):
    with pytest.raises(SoceError) as err:
        merge_to_disk(zoo[("float32", False)], weights, tmp_path / "soup", progress=False)
    assert message in str(err.value)
    assert not (tmp_path / "soup").exists()


def test_missing_model_directory(tmp_path):
    with pytest.raises(SoceError, match=r"model directory .*nowhere: not found"):
        merge_to_disk([tmp_path / "nowhere"], [1.0], tmp_path / "soup")


def test_existing_output_is_refused_unless_overwrite(zoo, tmp_path):
    experts = zoo[("float32", False)]
    out = tmp_path / "soup"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(SoceError, match="already exists"):
        merge_to_disk(experts, WEIGHTS, out, progress=False)
    with pytest.raises(SoceError, match="is a directory that is not a soup .*replaces only a soup soce wrote"):
        merge_to_disk(experts, WEIGHTS, out, overwrite=True, progress=False)
    assert (out / "keep.txt").read_text() == "mine"
    (out / "keep.txt").unlink()
    before = {p: p.read_bytes() for e in experts for p in e.iterdir()}
    merge_to_disk(experts, WEIGHTS, out, overwrite=True, progress=False)  # an empty directory
    merge_to_disk(experts, [0.2, 0.2, 0.6], out, overwrite=True, progress=False)  # a soup
    assert yaml.safe_load((out / "mergekit.yaml").read_text())["models"][2]["parameters"]["weight"] == 0.6
    assert before == {p: p.read_bytes() for e in experts for p in e.iterdir()}  # inputs untouched
    assert not list(tmp_path.glob(".soup*"))


def test_output_inside_an_input_is_refused(zoo, tmp_path):
    experts = zoo[("float32", False)]
    for out in (experts[0] / "soup", experts[1]):
        with pytest.raises(SoceError, match="overlaps the input model directory"):
            merge_to_disk(experts, WEIGHTS, out, overwrite=True, progress=False)
    assert not (experts[0] / "soup").exists()


def test_kill_9_leaves_no_directory_at_the_output_path(tmp_path):
    # Experts of about 70 MB each, so that the merge is still running when it is killed.
    experts = [build_tiny_llama(tmp_path / f"e{i}", seed=i, hidden=512, vocab_size=16384, shard_size="20MB") for i in range(3)]
    out = tmp_path / "soup"
    code = ("import sys; from soce.merge import merge_to_disk; "
            f"merge_to_disk({[str(e) for e in experts]!r}, [0.5, 0.2, 0.3], {str(out)!r}, shard_size='10MB', chunk_bytes=1 << 20)")
    proc = subprocess.Popen([sys.executable, "-c", code])
    partial = tmp_path / ".soup.partial"
    deadline = time.time() + 60
    while not list(partial.glob("model-*.safetensors")) and time.time() < deadline and proc.poll() is None:
        time.sleep(0.005)
    assert proc.poll() is None, "the merge ended before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not out.exists()
    merge_to_disk(experts, WEIGHTS, out, progress=False)  # a re-run clears the partial directory and completes
    assert out.exists() and not partial.exists()


def test_cli_merge_stage(soce, zoo, tmp_path):
    experts = zoo[("bfloat16", False)]
    out = tmp_path / "soup"
    models = "[" + ",".join(map(str, experts)) + "]"
    r = soce("stage=merge", f"merge.models={models}", "merge.weights=[0.5,0.2,0.3]", f"merge.output={out}",
             "merge.shard_size=30KB", "tracker=none", f"hydra.run.dir={tmp_path / 'run'}")
    assert r.returncode == 0, r.stderr
    reference = merge_to_disk(experts, WEIGHTS, tmp_path / "reference", shard_size="30KB", progress=False)
    for f in sorted(reference.glob("*.safetensors")):
        assert (out / f.name).read_bytes() == f.read_bytes()
    again = soce("stage=merge", f"merge.models={models}", "merge.weights=[0.5,0.2,0.3]", f"merge.output={out}",
                 "tracker=none", f"hydra.run.dir={tmp_path / 'run'}")
    assert again.returncode == 1 and f"error: merge.output {out} already exists" in again.stderr
    missing = soce("stage=merge", "tracker=none", f"hydra.run.dir={tmp_path / 'run'}")
    assert missing.returncode == 1 and "stage=merge needs merge.models" in missing.stderr


@pytest.mark.slow
def test_accelerate_two_processes_give_the_single_process_result(zoo, tmp_path):
    experts = zoo[("bfloat16", False)]
    out = tmp_path / "soup"
    models = "[" + ",".join(map(str, experts)) + "]"
    r = accelerate_launch(["stage=merge", f"merge.models={models}", "merge.weights=[0.5,0.2,0.3]", f"merge.output={out}",
                           "merge.shard_size=10KB", "tracker=none", f"hydra.run.dir={tmp_path / 'run'}"], cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "process 0 of 2" in r.stdout and "process 1 of 2" in r.stdout  # two processes, each writing its shards
    reference = merge_to_disk(experts, WEIGHTS, tmp_path / "reference", shard_size="10KB", progress=False)
    files = sorted(p.name for p in reference.iterdir())
    assert len([f for f in files if f.endswith(".safetensors")]) >= 4  # both processes had shards to write
    assert files == sorted(p.name for p in out.iterdir())
    for name in files:
        if name != "mergekit.yaml":
            assert (out / name).read_bytes() == (reference / name).read_bytes(), name


@pytest.mark.slow  # a script in a process of its own, its three experts built: 20 s
def test_the_gpu_check_script_runs_on_the_cpu(tmp_path):
    """Issue 39: scripts/gpu_check.py, made for a lent GPU machine, run as the tests can: its
    in-place sweep, its figures, and the last soup equal to the merge written to disk."""
    script = Path(__file__).resolve().parents[1] / "scripts" / "gpu_check.py"
    r = subprocess.run([sys.executable, str(script), "--device", "cpu", "--hidden", "128", "--layers", "2", "--points", "3",
                        "--prompts", "4", "--max-tokens", "4", "--workdir", str(tmp_path)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "sweep: 3 points; push median" in r.stdout and "GB/s moved against a copy bandwidth of" in r.stdout
    assert re.search(r"generation: median \d+ tokens/s", r.stdout)
    assert re.search(r"the last soup against the merge written to disk: (\d+) of \1 tensors equal\n", r.stdout), r.stdout
    assert r.stdout.rstrip().endswith("gpu check: PASSED")
