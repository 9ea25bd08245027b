import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402

import posbench  # noqa: E402


@pytest.fixture(scope="session", autouse=True)
def hermetic_default_store(tmp_path_factory):
    """The default results store (``posbench.store.default_store_path``) of every test is a
    fresh file, never the developer's own ``~/.local/share/posbench/results.sqlite``."""
    os.environ["POSBENCH_STORE"] = str(tmp_path_factory.mktemp("default-store") / "results.sqlite")


@pytest.fixture(scope="session")
def tiny_llama():
    return posbench.load_model("tiny-llama")


@pytest.fixture(scope="session")
def tiny_llama64():
    """tiny-llama in fp64 (where the bridge's fp32 softmax upcast turns fp64 mask values into -inf)."""
    import torch

    return posbench.load_model("tiny-llama", dtype=torch.float64)


@pytest.fixture(scope="session")
def tiny_gpt2():
    return posbench.load_model("tiny-gpt2")


@pytest.fixture(scope="session")
def tiny_neox():
    return posbench.load_model("tiny-neox")


@pytest.fixture(scope="session")
def smollm2():
    return posbench.load_model("smollm2-135m-instruct")


@pytest.fixture(scope="session")
def gemma():
    return posbench.load_model("gemma-3-270m")


@pytest.fixture(params=["smollm2-135m-instruct", "gemma-3-270m"], scope="session")
def embedded(request):
    return request.getfixturevalue({"smollm2-135m-instruct": "smollm2", "gemma-3-270m": "gemma"}[request.param])


def pytest_setup_options():
    """dash_duo's browser: Debian's headless Chromium, no network chatter."""
    from selenium.webdriver.chrome.options import Options

    os.environ.setdefault("SE_OFFLINE", "true")  # Selenium Manager must not try to download drivers
    options = Options()
    options.binary_location = "/usr/bin/chromium"
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-quic",
                "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync"):
        options.add_argument(arg)
    return options
