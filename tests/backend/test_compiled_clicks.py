"""/health names the decoder that answers clicks; without a C++ compiler that is the eager one, and
clicks work the same."""

from __future__ import annotations

from torch._inductor import cpp_builder, exc

from tests.backend.conftest import brush_task, encode, keypoint, noise_image, predict_body


def _click(backend, url: str) -> dict:
    body = predict_body("7", [brush_task(1, url)], context={"result": [keypoint(40, 50)]})
    response = backend.client.post("/predict", json=body)
    assert response.status_code == 200, response.text
    return response.json()["results"][0]


def test_switched_off_health_says_clicks_are_eager(make_backend):
    backend = make_backend(COMPILE_DECODER=False)
    health = backend.client.get("/health").json()
    assert health["click_decoder"]["path"] == "eager"
    assert health["click_decoder"]["reason"] == "COMPILE_DECODER=false"


def test_without_a_cpp_compiler_clicks_are_eager_and_health_says_why(make_backend, monkeypatch, shared_server):
    # Inductor's config is per thread here: the compiler search itself is replaced, for the warm-up thread.
    def no_compiler() -> str:
        raise exc.InvalidCxxCompiler

    monkeypatch.setattr(cpp_builder, "get_cpp_compiler", no_compiler)
    backend = make_backend(COMPILE_DECODER=True)
    compiled = backend.services.models.compiled
    assert compiled.wait(60)  # the background warm-up gives up at once
    health = backend.client.get("/health").json()["click_decoder"]
    assert health["path"] == "eager" and "C++ compiler" in health["reason"] and health["compiles"] == 0
    url = shared_server.add("/compiled-fallback.png", encode(noise_image(100, 120, 31)))
    assert _click(backend, url)["result"]
