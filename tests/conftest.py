"""Shared fixtures. The research photos live in ../shared and are never copied into the project."""

from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads: idle threads must not spin

import pytest
from hypothesis import settings

# Property tests check values, not speed: a shared 2-core CI machine must not turn them flaky.
settings.register_profile("geopin", deadline=None)
settings.load_profile("geopin")

PROJECT_ROOT = Path(__file__).resolve().parents[1]
SHARED_IM2GPS = Path(
    os.environ.get("GEOPIN_SHARED_IM2GPS", PROJECT_ROOT.parent / "shared" / "data" / "im2gps3k")
)


@pytest.fixture(scope="session", autouse=True)
def private_geopin_cache(tmp_path_factory):
    """geopin's cache root for the session is a temporary folder, so exported networks (13 MB each, one per
    fine-tuned temporary model) never land in the user's ~/.cache/geopin/onnx. Its other folders (the embedding
    cache, the gazetteer index) link to the user's ones, which tests reuse across runs on purpose. Costs one
    Lite0 export per session (~6 s on 2 cores)."""
    from geopin.io import cache_root

    user = cache_root()
    root = tmp_path_factory.mktemp("geopin-cache")
    (user / "embeddings").mkdir(parents=True, exist_ok=True)
    for entry in sorted(user.iterdir()):
        if entry.name != "onnx" and entry.is_dir():
            (root / entry.name).symlink_to(entry, target_is_directory=True)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("GEOPIN_CACHE", str(root))
        yield root


@pytest.fixture(scope="module")
def empty_geopin_cache(tmp_path_factory):
    """An empty geopin cache root for one test module: what it exports or builds is made there, from nothing."""
    root = tmp_path_factory.mktemp("geopin-cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("GEOPIN_CACHE", str(root))
        yield root


@pytest.fixture(scope="session")
def im2gps_dir() -> Path:
    """The Im2GPS3k folder beside the project; tests that need it skip with the reason where absent."""
    if not (SHARED_IM2GPS / "labels.csv").exists():
        pytest.skip(f"shared data not found at {SHARED_IM2GPS} (set GEOPIN_SHARED_IM2GPS or place ../shared beside the project)")
    return SHARED_IM2GPS


@pytest.fixture(scope="session")
def im2gps_embedded(im2gps_dir, tmp_path_factory):
    """The shared photos ingested (by photographer) and embedded with the default backbone: (manifest, embeddings).

    The embedding cache is the user's default one (linked from the session's cache root, see
    private_geopin_cache), so a second test run reuses the vectors.
    """
    import numpy as np

    from geopin.dataset.ingest import IngestConfig, ingest
    from geopin.dataset.manifest import read_manifest
    from geopin.features.embed import EmbedConfig, embed_manifest, load_embeddings

    work = tmp_path_factory.mktemp("im2gps")
    summary = ingest(im2gps_dir / "labels.csv", work / "ds", IngestConfig(group_col="author"))
    embed_manifest(summary.manifest_path, work / "emb", EmbedConfig())
    man = read_manifest(summary.manifest_path)
    emb, _ = load_embeddings(work / "emb", man)
    return man, np.asarray(emb)


@pytest.fixture(scope="session")
def predictor():
    """The bundled model and its backbone, loaded once for every test that predicts with it."""
    from geopin.locate.model import default_model_dir
    from geopin.locate.predict import PredictConfig, Predictor

    if not (default_model_dir() / "model.json").exists():
        pytest.skip(f"bundled default model missing: no model.json in {default_model_dir()} (it ships inside the package)")
    return Predictor(PredictConfig())


@pytest.fixture(scope="module")
def cluster():
    """A local Ray cluster of 2 CPUs (2 workers of 1 CPU), for one test module; shut down after it.

    Started as the engine starts its throwaway cluster: every port on loopback, no dashboard."""
    ray = pytest.importorskip("ray", reason="the engine tests need Ray: pip install 'geopin[cluster]'")
    from geopin.scale.engine import EngineConfig, ray_shutdown, start_ray

    if ray.is_initialized():
        ray.shutdown()
    start_ray(EngineConfig("ray", workers=2, cpus_per_worker=1))
    yield
    ray_shutdown()
