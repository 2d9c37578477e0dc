"""Big models and replicas on the Kubernetes endpoint backend: the GPUs a split model's pod asks for, and an engine
with several pods, each reached by its IP for adapters.

What is fake here, and why: no Kubernetes API server can run on these machines, so the backend talks (with the
real `kubernetes` client library, over loopback HTTP) to the fake API server in tests/fake_kube.py, the test
playing the cluster's controllers; small HTTP stubs stand in for the pods' engine and fetcher (vLLM cannot run
here, and what is tested is which pod the backend reaches). The generated objects are checked against the
Kubernetes OpenAPI schema (kubernetes_validate), as in tests/test_kubernetes_engines.py."""

from __future__ import annotations

import dataclasses
import itertools
import json
import threading
import time

import pytest

from service.engines import EngineSpec
from service.engines.kubernetes import build_objects, object_name
from service.settings import Settings
from tests.test_kubernetes_engines import _containers, _validate


def test_a_split_model_asks_for_its_gpus_and_replicas_for_pods(tmp_path):
    """A base model registered with tensor_parallel_size x pipeline_parallel_size: vLLM gets the flags and the pod
    that many nvidia.com/gpu (whatever HONE_K8S_GPUS_PER_ENGINE says: the model does not fit fewer); an
    endpoint's replicas are the Deployment's, the pod template unchanged (scaling starts pods, restarts none)."""
    settings = Settings(data_dir=tmp_path, k8s_gpus_per_engine=1)
    spec = EngineSpec(
        "ep-big", "vllm", "acme/llama-70b", "acme/llama-70b", max_loras=2, max_cpu_loras=2, max_lora_rank=16
    )
    split = dataclasses.replace(spec, tensor_parallel_size=4, pipeline_parallel_size=2, replicas=3)
    deployment, _, digest = build_objects(settings, split)
    _validate(deployment)
    main = _containers(deployment)["engine"]
    flags = dict(itertools.pairwise(main["command"] + main["args"]))
    assert flags["--tensor-parallel-size"] == "4" and flags["--pipeline-parallel-size"] == "2"
    assert main["resources"]["requests"]["nvidia.com/gpu"] == main["resources"]["limits"]["nvidia.com/gpu"] == "8"
    assert deployment["spec"]["replicas"] == 3

    one, _, one_digest = build_objects(settings, spec)
    engine = _containers(one)["engine"]
    assert "--tensor-parallel-size" not in engine["args"] and "--pipeline-parallel-size" not in engine["args"]
    assert engine["resources"]["limits"]["nvidia.com/gpu"] == "1" and one["spec"]["replicas"] == 1
    # only the replicas differ: the same pod template, another digest (ensure replaces the Deployment's count)
    more, _, more_digest = build_objects(settings, dataclasses.replace(spec, replicas=2))
    assert more["spec"]["template"] == one["spec"]["template"] and more["spec"]["replicas"] == 2
    assert more_digest != one_digest != digest

    # The built-in engine cannot split a model: the objects are never built for one.
    with pytest.raises(ValueError, match="built-in engine cannot split"):
        build_objects(settings, dataclasses.replace(split, engine="builtin"))


def test_replicas_are_pods_each_reached_by_its_ip(tmp_path):
    """An engine with replicas: the Deployment asks for that many pods, `ensure` waits for them all, and the
    handle names each ready pod by its IP (the ports its containers declare), so the deployer stages and loads
    adapters into every pod rather than whichever one the Service picks; one pod restarting ends the engine (its
    adapters are gone) until it is ensured again. The test plays the cluster, stubs answering on the pods' IPs."""
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from service.engines.kubernetes import KubernetesEngines
    from tests.fake_kube import FakeKube

    fetched: list[tuple[str, dict]] = []

    class Pod(BaseHTTPRequestHandler):
        def do_GET(self):  # /health
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def do_POST(self):  # the fetcher's /fetch
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            fetched.append((self.server.server_address[0], body))
            reply = json.dumps({"path": f"/adapters/{body['name']}"}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(reply)))
            self.end_headers()
            self.wfile.write(reply)

        def log_message(self, *args):
            pass

    stubs = [ThreadingHTTPServer((f"127.78.1.{n}", 0), Pod) for n in (1, 2, 3)]  # the Service, two pods
    for stub in stubs:
        threading.Thread(target=stub.serve_forever, daemon=True).start()
    service_stub, pod_stubs = stubs[0], stubs[1:]
    with FakeKube(job_controller=False) as kube:
        settings = Settings(
            data_dir=tmp_path,
            k8s_kubeconfig=kube.write_kubeconfig(tmp_path / "kubeconfig"),
            k8s_namespace="hone",
            endpoint_backend="kubernetes",
            engine_start_timeout_s=20,
            storage_url="s3://hone/blobs",
        )
        backend = KubernetesEngines(settings)
        spec = EngineSpec("ep-two", "vllm", "acme/tiny", "acme/tiny", 2, 2, 16, replicas=2)
        name = object_name(spec.key)

        def play_cluster():
            kube.wait_for(lambda: kube.get("deployments", "hone", name) and kube.get("services", "hone", name))
            assert kube.get("deployments", "hone", name)["spec"]["replicas"] == 2

            def service(obj):
                obj["spec"]["clusterIP"] = "127.78.1.1"
                obj["spec"]["ports"][0]["port"] = service_stub.server_address[1]

            kube.update("services", "hone", name, service)
            labels = kube.get("deployments", "hone", name)["spec"]["template"]["metadata"]["labels"]
            for n, stub in enumerate(pod_stubs, start=1):
                ip, port = stub.server_address
                ports = [{"name": "http", "containerPort": port}]
                fetch = [{"name": "fetch", "containerPort": port}]
                kube.create(
                    {
                        "apiVersion": "v1",
                        "kind": "Pod",
                        "metadata": {"name": f"{name}-{n}", "namespace": "hone", "labels": labels},
                        "spec": {
                            "containers": [
                                {"name": "engine", "image": "x", "ports": ports},
                                {"name": "fetcher", "image": "x", "ports": fetch},
                            ]
                        },
                    }
                )
                kube.run_pod("hone", f"{name}-{n}")
                kube.update("pods", "hone", f"{name}-{n}", lambda o, ip=ip: o["status"].update(podIP=ip))
                ready = {"observedGeneration": 1, "replicas": 2, "readyReplicas": n}
                kube.update("deployments", "hone", name, lambda o, r=ready: o.update(status=r))
                time.sleep(0.5)  # one ready pod is not enough: ensure waits for both

        player = threading.Thread(target=play_cluster)
        player.start()
        handle = backend.ensure(spec)
        player.join()
        assert handle.request_urls == (f"http://127.78.1.1:{service_stub.server_address[1]}",)  # the Service spreads
        pods = {f"http://{ip}:{port}" for ip, port in (s.server_address for s in pod_stubs)}
        assert {r.url for r in handle.ready} == pods and {r.fetch_url for r in handle.ready} == pods
        for replica in handle.ready:
            assert (
                backend.stage_weights(handle, "ep-two", "jobs/ftjob-1/model/", tmp_path, replica) == "/adapters/ep-two"
            )
        assert sorted(ip for ip, _ in fetched) == ["127.78.1.2", "127.78.1.3"]  # each pod's own fetcher
        assert all(body["source"] == "s3://hone/blobs/jobs/ftjob-1/model/" for _, body in fetched)

        assert backend.get(spec.key) == handle
        kube.update("pods", "hone", f"{name}-2", lambda o: o["status"]["containerStatuses"][0].update(restartCount=1))
        assert backend.get(spec.key) is None  # that pod lost its adapters: the endpoint deploys again
        backend.stop(spec.key)
        backend.close()
    for stub in stubs:
        stub.shutdown()
