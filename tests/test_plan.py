"""The memory plan (from Llama-3 configs, no weights), the live model dispatched by a device
map, the streamed uniform soup, and the bad input around them."""

import json
import logging
import re

import pytest
import torch
from transformers import AutoModelForCausalLM

from conftest import BFCL_FIXTURE, compose_cfg
from soce.placement.plan import memory_plan
from soce.stages.study import Study
from soce.errors import CheckpointError, ConfigError
from soce.engine.hf import load_model
from soce.merge import InPlaceSoup, merge_to_disk, open_checkpoint
from soce.placement.devices import GPU_OVERHEAD, Device, parse_devices
from soce.placement.memory import model_shape, plan_memory
from soce.pool import Candidate
from soce.tracking import NoTracker
from tiny_models import build_tiny_llama

LLAMA3 = dict(architectures=["LlamaForCausalLM"], model_type="llama", vocab_size=128256, hidden_act="silu",
              max_position_embeddings=8192, rms_norm_eps=1e-5, rope_theta=500000.0, tie_word_embeddings=False,
              torch_dtype="bfloat16", num_key_value_heads=8)
SIZES = {"8b": dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32),
         "70b": dict(hidden_size=8192, intermediate_size=28672, num_hidden_layers=80, num_attention_heads=64)}


@pytest.fixture(scope="module")
def llama3(tmp_path_factory):
    """Llama-3 8B and 70B model directories holding their config.json only."""
    root = tmp_path_factory.mktemp("llama3")
    for name, size in SIZES.items():
        (root / name).mkdir()
        (root / name / "config.json").write_text(json.dumps({**LLAMA3, **size}))
    return root


def by_hand(size: str) -> dict:
    """A Llama-3's parameters by hand: embedding and head, per layer attention (8 KV heads of
    128), MLP and two norms, the final norm."""
    s = SIZES[size]
    h, i, layers = s["hidden_size"], s["intermediate_size"], s["num_hidden_layers"]
    kv = 8 * 128
    layer = 2 * h * h + 2 * kv * h + 3 * h * i + 2 * h
    return {"numel": 2 * 128256 * h + layers * layer + h, "layer": layer, "embedding": 128256 * h, "h": h, "i": i,
            "layers": layers, "largest_in_layer": h * i}


def test_the_papers_8b_pool_fits_one_h100_by_a_hand_computation(llama3):
    hand = by_hand("8b")
    shape = model_shape(llama3 / "8b")
    assert shape.numel == hand["numel"] == 8_030_261_248 and shape.dtype == torch.bfloat16
    plan = plan_memory(shape, 3, parse_devices("1xH100-80GB"))
    [share] = plan.shares
    tokens = 32768
    assert plan.mode == "one device" and plan.fits and share.device == Device("cuda:0", 80 * 10**9)
    assert share.model == 2 * hand["numel"] and share.experts == 3 * 2 * hand["numel"]
    assert share.buffers == 2 * 4 * hand["embedding"]  # two float32 buffers of the largest tensor
    kv = 2 * 8 * 128 * 2  # keys and values, 8 heads of 128, bf16, per layer and token
    assert share.activations == tokens * (32 * kv + (2 * hand["i"] + 2 * hand["h"]) * 2)
    assert share.overhead == GPU_OVERHEAD
    assert share.total == 16_060_522_496 * 4 + 4_202_692_608 + 6_710_886_400 + 2**30  # 76.21 GB of 80
    # on a node of 8: one GPU holds it; the plan says how to use the other seven
    eight = plan_memory(shape, 3, parse_devices("8xH100-80GB"))
    assert eight.mode == "one device" and eight.idle == 7 and "accelerate launch --num_processes 8" in eight.text()
    assert plan_memory(shape, 3, parse_devices("H100-80GB"), processes=8).mode == "replicas"


def test_the_papers_70b_pool_is_dispatched_and_refused_with_the_fix(llama3):
    hand = by_hand("70b")
    shape = model_shape(llama3 / "70b")
    assert shape.numel == hand["numel"] == 70_553_706_496
    devices = parse_devices("8xH100-80GB")
    resident = plan_memory(shape, 3, devices)
    assert resident.mode == "dispatched" and not resident.fits  # 4 x 141 GB do not fit 640 GB
    text = resident.text()
    assert "DOES NOT FIT" in text and "sweep.offload=true: the experts (423.3 GB) in pinned host memory" in text
    assert "selection.max_experts=2" in text and "sweep.devices=9x80GB" in text
    with pytest.raises(ConfigError, match="(?s)does not fit its devices.*sweep.offload=true"):
        resident.check()

    plan = plan_memory(shape, 3, devices, experts_at="host", host_memory=2 * 10**12)
    assert plan.fits and plan.host == 3 * 2 * hand["numel"]
    blocks = [b for s in plan.shares for b in s.blocks]
    assert sorted(blocks) == sorted(b.name for b in shape.blocks)  # every block on exactly one device
    assert all(s.blocks for s in plan.shares)  # spread over all 8
    numel = {b.name: b.numel for b in shape.blocks}
    for s in plan.shares:  # each share by hand from the blocks it holds
        layers = [b for b in s.blocks if b.startswith("model.layers.")]
        assert s.model == 2 * sum(numel[b] for b in s.blocks)
        assert all(numel[b] == hand["layer"] for b in layers)
        largest = hand["embedding"] if {"model.embed_tokens", "lm_head"} & set(s.blocks) else hand["largest_in_layer"]
        assert s.experts == 3 * 2 * largest  # one tensor per expert staged on the GPU
        assert s.buffers == 2 * 4 * largest
        assert s.activations == 32768 * (len(layers) * 4096 + (2 * hand["i"] + 2 * hand["h"]) * 2)
    assert sum(s.model for s in plan.shares) == 2 * hand["numel"]
    totals = [s.total for s in plan.shares]
    assert max(totals) - min(totals) <= 2 * 2 * hand["layer"] + 8 * hand["embedding"]  # as even as whole layers allow
    # resident on H200s, the 70B pool fits
    assert plan_memory(shape, 3, parse_devices("8xH200-141GB")).fits
    # one process per GPU (accelerate launch), each with its own copy: refused, with the mode that fits
    replicas = plan_memory(shape, 3, parse_devices("H200-141GB"), processes=8, node=parse_devices("8xH200-141GB"))
    assert replicas.mode == "replicas" and not replicas.fits
    assert "one process over the node's 8 GPUs (run soce without `accelerate launch`)" in replicas.text()


def test_stage_plan_prints_the_plan_for_another_machine(study, llama3):
    models = ", ".join(f"{{name: m{i}, path: {llama3 / '70b'}}}" for i in range(4))
    s = study("stage=plan", "pool=all", f"pool.models=[{models}]", "sweep.devices=8xH100-80GB", "sweep.offload=true",
              "sweep.host_memory=2TB", "selection.max_experts=3")
    assert "no current selection.json in" in s.log and "planning for 3 experts (the pool's first 3" in s.log
    assert "the live model dispatched over 8 devices" in s.log and "host: 423.3 GB of 2.0 TB" not in s.log
    assert re.search(r"host: 423\.3 GB of 2000\.0 GB: the experts, pinned", s.log)
    assert "the uniform soup of all 4 candidates streams from disk" in s.log
    columns, rows = s.tracker.tables["memory_plan"]
    assert columns[0] == "device" and [r[0] for r in rows] == [f"cuda:{i}" for i in range(8)] + ["host"]


def test_the_70b_experiment_is_planned_for_the_devices_given_whatever_sweep_device_says(study, llama3, monkeypatch):
    """experiment=paper_bfcl_70b sets sweep.device=cuda (for the GPU machine it runs on); stage=plan
    on this CPU-only machine plans for sweep.devices. Issues 38/39: with no network (the Hub
    refused outright here) the pool config's architecture, Llama 3.1 70B's sizes, is planned; the
    same figures as the model's own config.json."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    args = ["experiment=paper_bfcl_70b", "stage=plan", "selection.max_experts=3", "tracker=none"]
    eight = study(*args, "sweep.devices=8xH100-80GB", run_dir=llama3 / "eight").log
    assert "Salesforce/Llama-xLAM-2-70b-fc-r (the pool config's architecture), 70.55B parameters in bfloat16" in eight
    assert "Hugging Face Hub" not in eight
    assert "the live model dispatched over 8 devices" in eight and "DOES NOT FIT" in eight
    assert "sweep.offload=true: the experts (423.3 GB) in pinned host memory" in eight  # the fix
    assert "sweep.device=cuda" not in eight
    one = study(*args, "sweep.devices=1xH100-80GB", run_dir=llama3 / "one").log
    assert "cuda:0     80.0 GB  141.1 GB" in one and "sweep.devices=9x80GB: 9 such GPUs" in one
    shipped = compose_cfg(["experiment=paper_bfcl_70b"]).pool.models
    assert all(m.architecture == shipped[0].architecture for m in shipped)
    assert model_shape(llama3 / "70b").numel == model_shape("x", architecture=dict(shipped[0].architecture)).numel == by_hand("70b")["numel"]
    assert model_shape(llama3 / "8b").numel == model_shape("x", architecture=dict(
        compose_cfg(["pool=bfcl_v3_8b"]).pool.models[0].architecture)).numel
    with pytest.raises(ConfigError, match="sweep.device=cuda: this machine has 0 CUDA GPUs"):  # a sweep runs here
        study(*args[:1], "stage=sweep", "sweep.devices=8xH100-80GB", f"benchmark.table={BFCL_FIXTURE}", run_dir=llama3 / "sweep")


def test_a_hub_config_that_cannot_be_fetched_is_one_line_not_its_retries(study, tmp_path, caplog, capfd, monkeypatch):
    """Issue 38: offline, each Hub retry was printed twice for 38 s before soce's own error. The
    Hub's answer is stood in for (no network here): it warns at each retry, then gives up."""
    import huggingface_hub
    import huggingface_hub.utils

    def refused(repo_id, filename, local_files_only=False, **_):
        if not local_files_only:
            for i in range(5):
                logging.getLogger("huggingface_hub.utils._http").warning("Retrying in 1s [Retry %d/5].", i + 1)
        raise huggingface_hub.utils.LocalEntryNotFoundError("cannot find the requested files in the local cache")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", refused)
    with pytest.raises(CheckpointError, match=r"someone/unknown-7b: neither a local model directory nor a Hub id .* "
                                              "Give the pool model a path, or its config.json's sizes as `architecture`"):
        study("stage=plan", "pool=all", "pool.models=[{name: m, hub_id: someone/unknown-7b}]", "tracker=none",
              run_dir=tmp_path / "run")
    assert "fetching someone/unknown-7b's config.json from the Hugging Face Hub" in caplog.text
    assert "Retry" not in caplog.text and "Retry" not in capfd.readouterr().err


@pytest.mark.parametrize("devices, message", [
    ("0xH100-80GB", "asks for 0 GPUs"),
    ("8xH100", "expected GPUs as COUNTxMEMORY"),
])
def test_bad_device_specs_are_refused(study, devices, message):
    with pytest.raises(ConfigError, match=f"sweep.devices={re.escape(repr(devices))}.*{message}|{message}"):
        study("stage=plan", f"sweep.devices={devices}")


def micro_run(zoo_cache, tmp_path, *overrides):
    cfg = compose_cfg(["pool=toy_zoo_micro", f"pool.cache_dir={zoo_cache}", "tracker=none", *overrides])
    return Study(cfg, tmp_path / "run", NoTracker())


def test_a_sweep_asking_for_gpus_this_machine_lacks_is_refused(zoo_cache, tmp_path):
    if torch.cuda.is_available():
        pytest.skip("this machine has GPUs")
    run = micro_run(zoo_cache, tmp_path, "sweep.devices=2x80GB")
    with pytest.raises(ConfigError, match=r"sweep.devices=2x80GB names 2 GPUs; this machine has 0"):
        memory_plan(run.cfg.sweep, run.pool_refs()[:3])


def test_a_pool_that_does_not_fit_is_refused_before_anything_loads(study, zoo_cache):
    args = ["benchmark.backend=direct", "benchmark.per_category=5", "pool=toy_zoo_micro", f"pool.cache_dir={zoo_cache}",
            "selection=topk", "selection.k=3", "search=grid", "search.budget=2", "sweep.tokens=16"]
    with pytest.raises(ConfigError, match=r"(?s)does not fit its devices.*selection.max_experts=2: 2 experts fit"
                                          r".*sweep.dtype=bfloat16: half the bytes"):
        study(*args, "sweep.devices=cpu:5MB")  # 1.5 MB of model, 4.5 MB of experts
    s = study(*args, "sweep.devices=cpu:5MB", "sweep.dtype=bfloat16", "stage=sweep")
    assert "2 points on dev" in s.log and "parameters in bfloat16 (741.9 kB)" in s.log
    # a candidate evaluated alone is placed by its plan too (no experts): refused where it does not fit
    with pytest.raises(ConfigError, match=r"(?s)does not fit its devices.*micro-.*0 experts beside it"):
        study(*args, "sweep.devices=cpu:1MB", "benchmark.cache=false", "stage=analyze", run_dir=s.dir / "small")
    again = study(*args, "sweep.devices=cpu:5MB", "sweep.dtype=bfloat16", "stage=plan", run_dir=s.dir)
    assert f"planning for the 3 experts of {s.dir / 'selection.json'}" in again.log and "DOES NOT FIT" not in again.log


def test_experts_of_different_dtypes_are_refused_unless_sweep_dtype_names_one(zoo_cache, tmp_path):
    run = micro_run(zoo_cache, tmp_path)
    a, b, c = run.pool_refs()[:3]
    half = tmp_path / "half"
    model, tokenizer = load_model(b, dtype="bfloat16")
    model.save_pretrained(half)
    tokenizer.save_pretrained(half)
    mixed = [a, Candidate(b.name, path=str(half)), c]
    with pytest.raises(ConfigError, match=r"dtypes differ: tensor .* is BF16 in .*half.*set sweep.dtype"):
        memory_plan(run.cfg.sweep, mixed)
    plan = memory_plan(micro_run(zoo_cache, tmp_path, "sweep.dtype=float32").cfg.sweep, mixed)
    assert plan.fits and plan.shape.dtype == torch.float32


# --- the dispatched live model, on CPU ---------------------------------------------------------
@pytest.fixture(scope="module")
def experts(tmp_path_factory):
    root = tmp_path_factory.mktemp("experts")
    return [build_tiny_llama(root / f"e{i}", seed=30 + i, hidden=64) for i in range(3)]


def test_a_model_dispatched_over_two_devices_soups_bit_identically_to_the_disk_merge(experts, tmp_path):
    """The planner splits the layers over two (fake) GPUs; the map, with each GPU read as the CPU,
    loads the live model; its soups equal the disk merge's bit for bit."""
    shape = model_shape(experts[0])
    devices = [Device("cuda:0", GPU_OVERHEAD + 1_000_000), Device("cuda:1", GPU_OVERHEAD + 1_000_000)]
    plan = plan_memory(shape, 3, devices, tokens=16)
    assert plan.mode == "dispatched" and plan.fits
    device_map = plan.device_map
    assert set(device_map.values()) == {"cuda:0", "cuda:1"} and device_map["model.layers.0"] != device_map["model.layers.1"]
    model, _ = load_model(Candidate("e0", path=str(experts[0])), {m: "cpu" for m in device_map}, "float32")
    soup = InPlaceSoup(model, experts)
    for i, weights in enumerate([[0.5, 0.2, 0.3], [0.1, 0.1, 0.8]]):
        soup.apply(weights)
        disk = merge_to_disk(experts, weights, tmp_path / f"soup{i}", progress=False)
        live = model.state_dict()
        reference = AutoModelForCausalLM.from_pretrained(disk).state_dict()
        for name, tensor in reference.items():
            assert torch.equal(live[name], tensor), name


def test_a_parameter_left_on_the_meta_device_is_refused(experts):
    model = AutoModelForCausalLM.from_pretrained(experts[0])
    model.model.norm.weight = torch.nn.Parameter(torch.empty(model.model.norm.weight.shape, device="meta"))
    with pytest.raises(CheckpointError, match=r"'model.norm.weight' is on the meta device.*soce soups only parameters held in memory"):
        InPlaceSoup(model, experts)


@pytest.mark.parametrize("tie", [False, True])
@pytest.mark.parametrize("chunked", [False, True])
def test_the_streamed_uniform_soup_equals_the_in_memory_one_bit_for_bit(tmp_path, monkeypatch, tie, chunked):
    if chunked:  # pieces of a few rows on both paths (3 rows of 32, or one row longer than a chunk)
        monkeypatch.setattr("soce.merge.inplace.CPU_CHUNK", 100)
    pool = [build_tiny_llama(tmp_path / f"c{i}", seed=50 + i, tie=tie, dtype=torch.bfloat16) for i in range(4)]
    held = AutoModelForCausalLM.from_pretrained(pool[0])
    streamed = AutoModelForCausalLM.from_pretrained(pool[0])
    InPlaceSoup(held, pool).apply([0.25] * 4)
    soup = InPlaceSoup(streamed, pool, stream=True)
    assert soup.held == {}  # nothing of the pool held in memory
    soup.apply([0.25] * 4)
    soup.close()
    assert held.state_dict().keys() == streamed.state_dict().keys()
    for name, tensor in held.state_dict().items():
        assert torch.equal(streamed.state_dict()[name], tensor), name
    assert open_checkpoint(pool[0]).nbytes == soup.nbytes // 4


# --- the vllm engine's plan (issue 39) ------------------------------------------------------------
def test_the_70b_experiment_gets_a_vllm_plan_offline_with_its_figures_by_hand(study, tmp_path, monkeypatch):
    """`soce stage=plan experiment=paper_bfcl_70b sweep.engine=vllm sweep.devices=8xH100-80GB` with
    no network and no vLLM installed: 8 tensor-parallel workers, each an eighth of the weights and
    of the KV cache, and its shard of each expert beside vLLM's share; the fixes where it does not
    fit, and the setting that fits the paper's three experts."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    args = ["experiment=paper_bfcl_70b", "stage=plan", "sweep.engine=vllm", "sweep.devices=8xH100-80GB", "tracker=none"]
    four = study(*args, run_dir=tmp_path / "four").log
    weights = by_hand("70b")["numel"] * 2 / 8
    kv = 32768 * 80 * (2 * 8 * 128) * 2 / 8  # tokens x layers x keys and values of 8 KV heads of 128, an eighth each
    assert "tensor parallel: 8 workers, one per GPU" in four
    assert re.search(rf"cuda:0 +80\.0 GB +68\.0 GB +{weights / 1e9:.1f} GB +{kv / 1e9:.1f} GB +[\d.]+ GB +{4 * weights / 1e9:.1f} GB "
                     r"+1\.1 GB +[\d.]+ GB  DOES NOT FIT", four), four
    assert "sweep.vllm.experts=files: the experts (564.4 GB) stay in their files" in four
    assert "selection.max_experts=3: 3 experts fit" in four
    three = study(*args, "selection.max_experts=3", run_dir=tmp_path / "three").log
    fix = re.search(r"sweep\.vllm\.gpu_memory_utilization=(0\.\d+): vLLM's weights", three)
    assert fix, three
    fits = study(*args, "selection.max_experts=3", f"sweep.vllm.gpu_memory_utilization={fix.group(1)}", run_dir=tmp_path / "fits").log
    assert "DOES NOT FIT" not in fits and "it does not fit" not in fits
    assert re.search(rf"experts +other +total\n  cuda:0 .* {3 * weights / 1e9:.1f} GB +1\.1 GB", fits)
    half = study(*args, "selection.max_experts=3", "sweep.devices=4xH100-80GB", run_dir=tmp_path / "half").log
    assert "tensor parallel: 4 workers" in half and "sweep.devices=8x80GB: 8 such GPUs, a worker on each" in half


def test_a_cpu_vllm_plan_counts_every_worker_in_the_host_memory(llama3):
    from soce.placement.vllm_plan import plan_vllm

    shape = model_shape(llama3 / "8b")
    plan = plan_vllm(shape, 3, parse_devices("cpu:256GB"), tensor_parallel_size=2, utilization=0.85, tokens=32768,
                     kv_cache_gb=4)
    [w0, w1] = plan.workers
    assert w0.weights == w1.weights == shape.nbytes // 2 and w0.experts == 3 * shape.nbytes // 2
    assert w0.kv_cache == 4 * 2**30
    assert plan.host == w0.total + w1.total and plan.fits
    assert "tensor parallel: 2 workers on the CPU, each on cores of its own" in plan.text()
    small = plan_vllm(shape, 3, parse_devices("cpu:40GB"), tensor_parallel_size=2, utilization=0.85, tokens=32768)
    assert not small.fits and "DOES NOT FIT" in small.text()


def test_a_tensor_parallel_size_below_one_is_refused():
    from soce import config

    with pytest.raises(ConfigError, match="sweep.vllm.tensor_parallel_size=0: at least 1"):
        config.validate(compose_cfg(["stage=plan", "sweep.engine=vllm", "sweep.vllm.tensor_parallel_size=0"]))
