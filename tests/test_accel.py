"""GPU accelerations (xrlib.models.accel) checked on the CPU: settings validated, the CPU path
unchanged by default, and channels_last, SDPA, compile, the CUDA-graph wrapper's buffers and bf16
giving the eager numbers within tolerance. The GPU itself is tested in test_cuda.py."""

import pytest
import torch

from xrlib.errors import ConfigError
from xrlib.models import accel as gpu
from xrlib.models.accel import SamplingAccel, SamplingUNet, TrainAccel, for_sampling
from xrlib.models.sampling import diffusion_loss, make_scheduler, sample
from xrlib.models.training import TrainConfig
from xrlib.models.unet import build_unet
from xrlib.params import RestoreSettings, RestorerConfigSchema, parse

UNET = {"block_out_channels": [16, 32], "layers_per_block": 1, "attention_levels": [False, True],
        "norm_num_groups": 8, "condition_channels": 1}
SCHEDULE = {"num_train_timesteps": 1000, "beta_schedule": "cosine", "prediction_type": "v_prediction"}
CPU = torch.device("cpu")


@pytest.fixture(autouse=True)
def _one_thread(one_torch_thread):
    yield


def tiny_unet(seed: int = 0):
    torch.manual_seed(seed)
    return build_unet(UNET)


def ddim(model, condition, steps=4):
    generators = [torch.Generator().manual_seed(s) for s in range(condition.shape[0])]
    return sample(model, make_scheduler("ddim", SCHEDULE), condition, steps=steps, generator=generators, clamp=False)


@pytest.mark.parametrize("block, values, message", [
    ("train", {"accel": {"compile": "fastest"}}, "train.accel.compile"),
    ("train", {"accel": {"channel_last": True}}, "unknown key channel_last"),
    ("train", {"accel": {"prefetch_factor": 0}}, "prefetch_factor = 0 is out of range"),
    ("train", {"accel": {"fused_adamw": "yes"}}, "expected bool"),
    ("restore", {"graph": "cudagraph"}, "restore.accel.graph"),
    ("restore", {"bf16": 1}, "expected bool"),
    ("restore", {"compile_backend": "tvm"}, "compile_backend"),
])
def test_each_accel_setting_is_validated(block, values, message):
    with pytest.raises(ConfigError, match=message):
        if block == "train":
            parse(TrainConfig, values, "train")
        else:
            parse(SamplingAccel, values, "restore.accel")


def test_accel_blocks_are_checked_where_params_files_hold_them():
    restorer = {"train": {"accel": {"compile": "max-autotune-no-cudagraphs", "channels_last": True}}}
    assert parse(RestorerConfigSchema, restorer, "restorer.base").train["accel"]["compile"] == "max-autotune-no-cudagraphs"
    with pytest.raises(ConfigError, match="restorer.base.train.accel: unknown key compiled"):
        parse(RestorerConfigSchema, {"train": {"accel": {"compiled": True}}}, "restorer.base")
    restore = {"seed": 0, "configs": ["a"], "test_inputs": {}, "steps": 2, "batch_size": 1, "zoom_px": 4,
               "gallery_images": 1, "accel": {"device": "auto", "graph": "cuda_graph", "bf16": True}}
    assert parse(RestoreSettings, restore, "restore").accel["graph"] == "cuda_graph"
    with pytest.raises(ConfigError, match="restore.accel: unknown key graphs"):
        parse(RestoreSettings, {**restore, "accel": {"graphs": "off"}}, "restore")
    with pytest.raises(ConfigError, match="no torch device"):
        for_sampling(tiny_unet(), {"device": "gpu0"})


def test_defaults_leave_the_cpu_path_as_it_was():
    model = tiny_unet()
    assert for_sampling(model) is model and not model.training
    assert all(p.is_contiguous() for p in model.parameters())
    settings = TrainAccel()
    optimizer = gpu.make_adamw(model.parameters(), settings, CPU, lr=1e-3)
    assert not optimizer.param_groups[0]["fused"]
    assert gpu.loader_options(settings, CPU, 2) == {"num_workers": 2, "pin_memory": False}
    assert gpu.compile_for_training(model, settings, CPU) is model
    assert not gpu.active(settings, CPU) and gpu.active(settings, "cuda")
    assert gpu.loader_options(TrainAccel(on_cpu=True, prefetch_factor=3), CPU, 2) == {
        "num_workers": 2, "pin_memory": False, "prefetch_factor": 3, "persistent_workers": True}


def test_cpu_adamw_takes_the_multi_tensor_kernel_with_the_single_tensor_result():
    model, reference = tiny_unet(), tiny_unet()
    optimizer = gpu.make_adamw(model.parameters(), TrainAccel(), CPU, lr=1e-2, weight_decay=0.01)
    single = torch.optim.AdamW(reference.parameters(), lr=1e-2, weight_decay=0.01, foreach=False)
    assert optimizer.param_groups[0]["foreach"]
    generator = torch.Generator().manual_seed(0)
    for _ in range(3):
        for parameter, twin in zip(model.parameters(), reference.parameters()):
            parameter.grad = torch.randn(parameter.shape, generator=generator)
            twin.grad = parameter.grad.clone()
        optimizer.step(), single.step()
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(model.parameters(), reference.parameters()))
    assert any(not torch.equal(a, b) for a, b in zip(model.parameters(), tiny_unet().parameters()))  # it did move
    gpu.after_resume(single, TrainAccel(), CPU)  # a state written by the single-tensor path resumes on foreach
    assert single.param_groups[0]["foreach"] and not single.param_groups[0]["fused"]


def test_attention_is_explicitly_sdpa_and_matches_the_classic_path():
    from diffusers.models.attention_processor import Attention, AttnProcessor, AttnProcessor2_0

    def processors():
        return {type(m.processor) for m in model.modules() if isinstance(m, Attention)}

    model = tiny_unet().eval()
    x, t = torch.rand(2, 2, 32, 32) * 2 - 1, torch.tensor([10, 900])
    gpu.set_attention(model, "classic")
    assert processors() == {AttnProcessor}
    with torch.no_grad():
        classic = model(x, t).sample
    gpu.prepare_model(model, TrainAccel(), CPU)
    assert processors() == {AttnProcessor2_0}
    with torch.no_grad():
        torch.testing.assert_close(model(x, t).sample, classic, rtol=1e-4, atol=1e-5)


def test_channels_last_gives_the_eager_loss_and_gradients():
    scheduler = make_scheduler("ddpm", SCHEDULE)
    clean, condition = torch.rand(2, 1, 32, 32) * 2 - 1, torch.rand(2, 1, 32, 32) * 2 - 1
    results = []
    for settings in (TrainAccel(), TrainAccel(on_cpu=True, channels_last=True)):
        model = gpu.prepare_model(tiny_unet().train(), settings, CPU)
        loss = diffusion_loss(model, scheduler, clean, [3, 4], condition)
        loss.backward()
        results.append((loss.detach(), {n: p.grad for n, p in model.named_parameters()}))
    assert model.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(results[1][0], results[0][0], rtol=1e-5, atol=1e-6)
    for name, grad in results[0][1].items():
        torch.testing.assert_close(results[1][1][name], grad, rtol=1e-3, atol=1e-5, msg=name)


def test_graph_wrapper_buffers_give_the_eager_samples_and_one_graph_per_shape():
    model = tiny_unet().eval()
    wrapped = SamplingUNet(model, "cuda_graph", simulate_graph=True)
    assert wrapped.config is model.config and next(wrapped.parameters()) is next(model.parameters())
    for batch, size in ((2, 32), (1, 16), (2, 32)):
        condition = torch.rand(batch, 1, size, size, generator=torch.Generator().manual_seed(size)) * 2 - 1
        torch.testing.assert_close(ddim(wrapped, condition), ddim(model, condition), rtol=0, atol=1e-6)
    assert len(wrapped._graphs) == 2  # (2, 32) and (1, 16): replayed, not captured again
    output = wrapped(torch.zeros(1, 2, 16, 16), 5).sample
    assert output.data_ptr() != wrapped._graphs[next(k for k in wrapped._graphs if k[0][0] == 1)][2].data_ptr()


def test_graph_wrapper_serves_indi_restoration_with_continuous_timesteps():
    from xrlib.models.sampling import indi_restore

    schedule = {"process": "indi", "prediction_type": "sample", "num_train_timesteps": 1000, "target": "image"}
    model = tiny_unet().eval()
    degraded = torch.rand(2, 1, 32, 32, generator=torch.Generator().manual_seed(3)) * 2 - 1
    wrapped = SamplingUNet(model, "cuda_graph", simulate_graph=True)
    torch.testing.assert_close(indi_restore(wrapped, schedule, degraded, 3, degraded),
                               indi_restore(model, schedule, degraded, 3, degraded), rtol=0, atol=1e-6)
    assert [key[3] for key in wrapped._graphs] == [torch.float32]  # one graph, float timesteps


def test_bf16_sampling_agrees_with_float32_within_bf16_tolerance():
    model = tiny_unet().eval()
    condition = torch.rand(2, 1, 32, 32, generator=torch.Generator().manual_seed(1)) * 2 - 1
    reference = ddim(model, condition)
    bf16 = ddim(SamplingUNet(model, "off", bf16=True), condition)
    assert bf16.dtype == torch.float32
    assert (bf16 - reference).abs().max() < 0.05 and (bf16 - reference).abs().mean() < 0.01


def test_compiled_sampling_and_training_trace_and_match_eager():
    """TorchDynamo's tracing (backend eager) of the UNet for sampling and for a training step."""
    torch._dynamo.reset()
    model = tiny_unet().eval()
    condition = torch.rand(1, 1, 32, 32, generator=torch.Generator().manual_seed(2)) * 2 - 1
    wrapped = for_sampling(model, {"graph": "compile", "compile_backend": "eager", "on_cpu": True,
                                   "channels_last": False})
    assert isinstance(wrapped, SamplingUNet)
    torch.testing.assert_close(ddim(wrapped, condition), ddim(model, condition), rtol=0, atol=1e-6)
    settings = TrainAccel(on_cpu=True, compile="max-autotune-no-cudagraphs", compile_backend="eager")
    network = gpu.compile_for_training(tiny_unet().train(), settings, CPU)
    eager = tiny_unet().train()
    scheduler = make_scheduler("ddpm", SCHEDULE)
    clean = torch.rand(2, 1, 32, 32) * 2 - 1
    losses = [diffusion_loss(m, scheduler, clean, [5, 6], clean) for m in (network, eager)]
    torch.testing.assert_close(losses[0], losses[1], rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_inductor_compiled_unet_matches_eager_on_the_cpu():
    """Inductor's generated C++ for the tiny UNet's forward (about a minute on 2 cores: marked slow)."""
    torch._dynamo.reset()
    model = tiny_unet().eval()
    x, t = torch.rand(1, 2, 32, 32) * 2 - 1, torch.tensor([250])
    compiled = gpu.compile_model(model, "default")
    with torch.no_grad():
        torch.testing.assert_close(compiled(x, t).sample, model(x, t).sample, rtol=1e-4, atol=1e-4)


def test_train_with_accel_on_the_cpu_resumes_the_same_run_and_keeps_its_numbers(tmp_path, monkeypatch):
    """accel settings are not part of a run's identity: a run started plain continues with
    channels_last and compile (the optimizer state taking the parameters' layout) and ends where
    the same run continued plainly ends."""
    from test_training import BlurredPairs, MODEL_CONFIG, denoising_loss, tiny_denoiser

    from xrlib.models.training import train

    def run(run_dir, steps, accel):
        config = {"steps": steps, "batch_size": 4, "learning_rate": 1e-2, "warmup_steps": 2, "checkpoint_every": 3,
                  "log_every": 1, "seed": 7, "progress": False, "dvclive": False, "accel": accel}
        return train(tiny_denoiser(), denoising_loss, BlurredPairs(), config, run_dir, MODEL_CONFIG)

    resumed = []
    original = gpu.after_resume

    def spy(optimizer, settings, device):
        def matching():
            return all(p.stride() == s["exp_avg"].stride() for p, s in optimizer.state.items())

        before = matching()
        original(optimizer, settings, device)
        resumed.append((before, matching()))

    monkeypatch.setattr(gpu, "after_resume", spy)
    for name in ("plain", "split"):
        run(tmp_path / name, 3, {})
    plain = run(tmp_path / "plain", 6, {})
    accel = {"on_cpu": True, "channels_last": True, "compile": "default", "compile_backend": "eager"}
    split = run(tmp_path / "split", 6, accel)
    assert resumed == [(True, True), (False, True)]  # the plain resume, then the channels_last one
    assert split["model"][0].weight.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close([loss for _, loss in split["history"]], [loss for _, loss in plain["history"]],
                               rtol=1e-4, atol=1e-6)
    for got, expected in zip(split["ema"].parameters(), plain["ema"].parameters()):
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-6)


def test_ddpm_lq_twins_sampled_channels_last_are_the_eager_twins():
    """``lq_ddpm.accel`` (checked like restore.accel) changes how twins are computed, not what they are."""
    from xrlib.lq.twins import ddpm_translate
    from xrlib.params import load_params, stage_settings

    section = load_params()["lq_ddpm"]
    assert stage_settings("lq_ddpm", {**section, "accel": {"channels_last": True, "on_cpu": True}}).accel["channels_last"]
    with pytest.raises(ConfigError, match="lq_ddpm.accel: unknown key channel_last"):
        stage_settings("lq_ddpm", {**section, "accel": {"channel_last": True}})
    unconditional = {**UNET, "condition_channels": 0}
    torch.manual_seed(0)
    eager = build_unet(unconditional).eval()
    fast = for_sampling(build_unet(unconditional), {"channels_last": True, "on_cpu": True})
    fast.load_state_dict(eager.state_dict())
    assert next(fast.parameters()).is_contiguous(memory_format=torch.channels_last)
    hq = torch.rand(2, 1, 16, 16)
    scheduler = make_scheduler("ddim", SCHEDULE)
    twins = [ddpm_translate(model, scheduler, hq, 0.6, 5, 2, seed=3) for model in (eager, fast)]
    torch.testing.assert_close(twins[1], twins[0], rtol=0, atol=1e-5)
    assert not torch.allclose(twins[0], hq, atol=1e-3)  # the model did edit the images
