import pytest
from pydantic import ValidationError

from maskwatch.config import Settings, apply_overrides, default_cache_dir, load_settings


def test_defaults_env_and_toml(tmp_path, monkeypatch):
    s = load_settings()
    assert s.detector.backend == "auto" and s.models.model_dir is None and s.models.reclassify_every == 10
    monkeypatch.setenv("MASKWATCH_DETECTOR__BACKEND", "res10")
    assert load_settings().detector.backend == "res10"
    cfg = tmp_path / "maskwatch.toml"
    cfg.write_text("[detector]\nscore_threshold = 0.7\n[models]\nreclassify_every = 4\n")
    s = load_settings(cfg)
    assert s.detector.score_threshold == 0.7 and s.models.reclassify_every == 4
    assert s.detector.backend == "res10"  # the environment wins over the file
    monkeypatch.setenv("MASKWATCH_CONFIG", str(cfg))
    assert load_settings().models.reclassify_every == 4


def test_bad_values_and_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_settings(tmp_path / "nope.toml")
    with pytest.raises(ValidationError):
        Settings(detector={"backend": "haar"})
    cfg = tmp_path / "bad.toml"
    cfg.write_text("[detector]\nscore_threshold = 5\n")
    with pytest.raises(ValidationError):
        load_settings(cfg)


def test_apply_overrides_deep_merges(tmp_path):
    s = apply_overrides(Settings(), {"detector": {"yunet_path": str(tmp_path / "y.onnx")}})
    assert s.detector.yunet_path == tmp_path / "y.onnx" and s.detector.backend == "auto"


def test_cache_dir_is_isolated_in_tests(tmp_path):
    assert str(default_cache_dir()).startswith(str(tmp_path))
