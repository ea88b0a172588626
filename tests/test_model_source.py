"""A model name that leads nowhere fails in seconds, saying why (issue 22): a mistyped path is named at once; a Hub id
is asked about once, briefly, against a local stand-in for the Hub that answers as the Hub does (an unknown
repository, a gated one, a refused token, no answer at all, no server)."""

import http.server
import json
import socket
import threading
import time

import pytest

from hspnet.utils.model_source import ModelSourceError, check_model_name, resolve_model_source

PROBE = 1.0  # seconds a probe may take in these tests


class FakeHubHandler(http.server.BaseHTTPRequestHandler):
    """`GET /api/models/<id>` as the Hub answers it (huggingface_hub reads the status and `X-Error-Code`)."""

    def do_GET(self):  # noqa: N802 - the name http.server calls
        repo = self.path.split("?")[0].removeprefix("/api/models/")
        if repo == "slow/model":
            time.sleep(PROBE * 5)
        answers = {
            "ok/model": (200, {}, {"id": "ok/model", "sha": "0" * 40}),
            "gated/model": (403, {"X-Error-Code": "GatedRepo", "X-Error-Message": "gated"}, {"error": "gated"}),
            "forbidden/model": (403, {}, {"error": "forbidden"}),
            "broken/hub": (503, {}, {"error": "unavailable"}),
        }
        status, headers, body = answers.get(repo, (401, {"X-Error-Code": "RepoNotFound"}, {"error": "not found"}))
        data = json.dumps(body).encode()
        self.send_response(status)
        for key, value in {"Content-Type": "application/json", **headers}.items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


@pytest.fixture
def hub(monkeypatch):
    """A stand-in Hub on a local port; the Hub client is pointed at it and HF_HUB_OFFLINE is off."""
    from huggingface_hub import constants

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), FakeHubHandler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    monkeypatch.setattr(constants, "ENDPOINT", f"http://127.0.0.1:{server.server_address[1]}")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HF_HUB_CACHE", "/nonexistent-hspnet-test-cache")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", "/nonexistent-hspnet-test-cache")
    yield server
    server.shutdown()


def _fails(name, kind, **kwargs):
    start = time.perf_counter()
    with pytest.raises(ModelSourceError) as caught:
        resolve_model_source(name, **kwargs)
    assert caught.value.kind == kind, str(caught.value)
    assert time.perf_counter() - start < PROBE * 3
    return str(caught.value)


def test_a_path_that_does_not_exist_is_named_without_asking_the_hub(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "outputs").mkdir()
    for name in ("outputs/dem", "./model", "/no/such/folder", "a/b/c", "~/no-such-hspnet-model"):
        with pytest.raises(ModelSourceError, match=f"^{name}: model folder does not exist$") as caught:
            check_model_name(name)
        assert caught.value.kind == "path"
    assert check_model_name("outputs") is True and check_model_name("someone/model") is False
    assert resolve_model_source(tmp_path / "outputs").local_files_only is True


def test_the_hub_answers_which_of_network_id_or_access_is_wrong(hub):
    assert resolve_model_source("ok/model", timeout=PROBE).local_files_only is False
    message = _fails("nobody/nothing", "id", timeout=PROBE)
    assert message.startswith("nobody/nothing: no such local folder, and no such model repository on the Hub")
    assert "gated" in _fails("gated/model", "access", timeout=PROBE)
    assert "HTTP 403" in _fails("forbidden/model", "access", timeout=PROBE)
    assert "HTTP 503" in _fails("broken/hub", "network", timeout=PROBE)
    assert "network" in _fails("slow/model", "network", timeout=PROBE)


def test_no_server_at_all_is_the_network_within_seconds(hub, monkeypatch):
    from huggingface_hub import constants

    with socket.socket() as closed:  # a port nobody listens on
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    monkeypatch.setattr(constants, "ENDPOINT", f"http://127.0.0.1:{port}")
    message = _fails("someone/model", "network", timeout=PROBE)
    assert message.startswith("someone/model: no such local folder, and the Hub cannot be reached")


def test_offline_asks_only_the_local_cache(monkeypatch, tmp_path):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    assert "HF_HUB_OFFLINE is set" in _fails("someone/model", "offline")
    snapshot = tmp_path / "models--someone--model" / "snapshots" / ("1" * 40)  # the cache layout of the Hub client
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_text("{}")
    (tmp_path / "models--someone--model" / "refs").mkdir()
    (tmp_path / "models--someone--model" / "refs" / "main").write_text("1" * 40)
    source = resolve_model_source("someone/model")
    assert source.local_files_only is True and source.path == str(snapshot)  # what a loader is given: no Hub call


def test_an_unreachable_hub_falls_back_to_the_cache(hub, monkeypatch, tmp_path):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    snapshot = tmp_path / "models--broken--hub" / "snapshots" / ("2" * 40)
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_text("{}")
    (tmp_path / "models--broken--hub" / "refs").mkdir()
    (tmp_path / "models--broken--hub" / "refs" / "main").write_text("2" * 40)
    assert resolve_model_source("broken/hub", timeout=PROBE).local_files_only is True


def test_predict_names_an_unknown_hub_model_in_one_line(hub, tmp_path, capsys):
    from hspnet.cli import main

    image = tmp_path / "a.png"
    image.write_bytes(b"")
    assert main(["predict", str(image), "--model", "nobody/nothing", "--no_progress"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("hspnet predict: error: nobody/nothing: no such local folder, and no such model repository")
    assert len(err.splitlines()) == 1
