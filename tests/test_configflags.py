"""Flags generated from config dataclasses (icm_codec/configflags.py): a field's flag, default,
help and environment variable come from its declaration, and ``icm train``, ``icm edge`` and
``icm cloud`` offer every field of their config."""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass

import pytest

from icm_codec.commands import HelpParser
from icm_codec.configflags import (
    add_config_flags,
    config_from_args,
    env_names,
    flag,
    flag_names,
    not_a_flag,
)


def _throwaway(steps_default: int):
    @dataclass
    class Toy:
        name: str = flag(help="who", env="ICM_T_NAME")
        steps: int = flag(steps_default, help="how many steps")
        rate: float = flag(0.5, flags=["--lr", "--rate"], help="learning rate")
        mode: str = flag("fast", choices=["fast", "slow"], help="speed")
        loop: bool = flag(False, help="forever")
        checks: bool = flag(True, flags=["--no-checks"], help="skip the checks")
        paths: list[str] = flag(default_factory=list, append=True, metavar="DIR", help="folders")
        names: list[str] = flag(default_factory=lambda: ["a", "b"], show=",".join,
                                type=lambda t: t.split(","), help="comma-separated")
        secret: str = not_a_flag("", why="from the environment only")

    return Toy


def _parser(cls, environ=None, prefix="ICM_T_"):
    p = HelpParser(prog="toy")
    add_config_flags(p, cls, env_prefix=prefix, environ=environ or {})
    return p


def _help(p: argparse.ArgumentParser) -> str:
    return " ".join(p.format_help().split())  # one line: argparse wraps at the terminal width


def test_flag_default_help_and_variable_come_from_the_field() -> None:
    for default in (7, 1234):
        toy = _throwaway(default)
        p = _parser(toy)
        text = _help(p)
        assert f"--steps STEPS how many steps [$ICM_T_STEPS] (default: {default})" in text
        assert "--lr LR, --rate LR learning rate [$ICM_T_LR] (default: 0.5)" in text
        assert "--no-checks skip the checks [$ICM_T_NO_CHECKS]" in text  # a switch: no default
        assert "[$ICM_T_NAME]" in text and "secret" not in text
        cfg = config_from_args(toy, p.parse_args(["--name", "x"]), env_prefix="ICM_T_")
        assert cfg == toy(name="x", steps=default)
    assert flag_names(toy)["rate"] == ("--lr", "--rate")
    assert flag_names(toy)["secret"] == ()
    assert env_names(toy, "ICM_T_")["steps"] == "ICM_T_STEPS"
    assert "secret" not in env_names(toy, "ICM_T_")


def test_flag_beats_variable_beats_default() -> None:
    toy = _throwaway(5)
    env = {"ICM_T_NAME": "env", "ICM_T_STEPS": "9", "ICM_T_LOOP": "yes", "ICM_T_NO_CHECKS": "1",
           "ICM_T_PATHS": "p1:p2", "ICM_T_NAMES": "x,y", "ICM_T_MODE": "slow"}
    p = _parser(toy, env)
    cfg = config_from_args(toy, p.parse_args([]))
    assert (cfg.name, cfg.steps, cfg.loop, cfg.checks, cfg.paths, cfg.names, cfg.mode) == (
        "env", 9, True, False, ["p1", "p2"], ["x", "y"], "slow")
    assert "(default: 9)" in _help(p)  # help shows what a run without the flag gets
    cfg = config_from_args(toy, p.parse_args(["--name", "flag", "--steps", "3", "--paths", "q",
                                              "--names", "z", "--mode", "fast"]))
    assert (cfg.name, cfg.steps, cfg.paths, cfg.names, cfg.mode) == ("flag", 3, ["q"], ["z"],
                                                                     "fast")
    cfg = config_from_args(toy, _parser(toy).parse_args(["--name", "n"]))
    assert (cfg.steps, cfg.loop, cfg.checks, cfg.paths, cfg.names) == (5, False, True, [],
                                                                       ["a", "b"])
    assert config_from_args(toy, p.parse_args([]), steps=11).steps == 11  # code wins


@pytest.mark.parametrize(("env", "message"), [
    ({"ICM_T_STEPS": "many"}, "argument --steps: $ICM_T_STEPS='many': invalid int value"),
    ({"ICM_T_MODE": "medium"},
     "argument --mode: $ICM_T_MODE='medium': choose from 'fast', 'slow'"),
    ({"ICM_T_LOOP": "sometimes"}, "argument --loop: $ICM_T_LOOP='sometimes': expected one of"),
])
def test_a_bad_variable_is_an_argparse_error(env, message, capsys) -> None:
    p = _parser(_throwaway(5), env)
    with pytest.raises(SystemExit) as e:
        p.parse_args(["--name", "n"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert f"toy: error: {message}" in err and "Traceback" not in err
    p.parse_args(["--name", "n", "--steps", "1", "--mode", "fast", "--loop"])  # flags win
    with pytest.raises(SystemExit) as e:
        p.parse_args(["--help"])  # help still works
    assert e.value.code == 0


def test_a_required_field_asks_for_its_flag_or_variable() -> None:
    toy = _throwaway(5)
    with pytest.raises(ValueError, match=r"^--name is required \(or set ICM_T_NAME\)$"):
        config_from_args(toy, _parser(toy).parse_args([]), env_prefix="ICM_T_")

    @dataclass
    class NoEnv:
        data: list[str] = flag(nargs="+", help="inputs")

    p = HelpParser(prog="toy", exit_on_error=False)
    add_config_flags(p, NoEnv)
    assert config_from_args(NoEnv, p.parse_args(["--data", "a", "b"])).data == ["a", "b"]
    with pytest.raises(SystemExit):
        p.parse_args([])  # argparse: "the following arguments are required: --data"


def test_every_field_is_a_flag_or_says_why_not() -> None:
    @dataclass
    class Undeclared:
        x: int = 1

    with pytest.raises(TypeError, match="neither flag"):
        add_config_flags(HelpParser(), Undeclared)


# -- the commands ----------------------------------------------------------------------------
def _command_help(name: str, capsys, monkeypatch) -> str:
    from icm_app.main import main

    for var in ("ICM_STALL_S", "ICM_CLOUD_DB", "ICM_DETECTORS", "ICM_LISTEN"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("COLUMNS", "200")
    with pytest.raises(SystemExit) as e:
        main([name, "--help"])
    assert e.value.code == 0
    return capsys.readouterr().out


def _configs():
    from cloud_decoder.config import ENV_PREFIX as CLOUD
    from cloud_decoder.config import CloudConfig
    from edge_encoder.config import ENV_PREFIX as EDGE
    from edge_encoder.config import EdgeConfig
    from icm_codec.train.config import TrainConfig

    # command, config, variable prefix, fields without a flag in help (and why)
    return [("train", TrainConfig, None, {"kind": "positional", "extra": "set by --plan-job"}),
            ("edge", EdgeConfig, EDGE, {}),
            ("cloud", CloudConfig, CLOUD, {"analyst_token": "$ICM_ANALYST_TOKEN only"})]


@pytest.mark.parametrize("which", [0, 1, 2], ids=["train", "edge", "cloud"])
def test_help_lists_every_config_field(which, capsys, monkeypatch) -> None:
    name, cls, prefix, unlisted = _configs()[which]
    text = _command_help(name, capsys, monkeypatch)
    for field, flags in flag_names(cls).items():
        if field in unlisted:
            assert not flags, f"{field} has a flag after all"
            continue
        assert flags, f"icm {name}: {cls.__name__}.{field} has no flag"
        for f in flags:
            assert f"{f} " in text or f"{f}\n" in text, f"icm {name} --help lacks {f}"
    for env in env_names(cls, prefix).values():
        assert f"[${env}]" in text
    if name != "train":  # every service flag of a config field has a variable
        # tls, metrics_port and threads: the flags both services share (icm_rpc.cli_common)
        generated = {f for f, names in flag_names(cls).items() if names} - {
            "tls", "metrics_port", "threads"}
        assert generated - set(env_names(cls, prefix)) <= {"adapted_dirs"}  # $ICM_ADAPTED_PATH
    else:
        assert env_names(cls, prefix) == {}
        assert "{base,enhancement,residual,single,dc}" in text  # LayerKind.choices()


def test_the_documented_variables_are_kept(monkeypatch) -> None:
    """The variables deployments already set keep their names (docs/services.md, deploy/)."""
    from cloud_decoder.config import ENV_PREFIX as CLOUD
    from cloud_decoder.config import CloudConfig
    from edge_encoder.config import ENV_PREFIX as EDGE
    from edge_encoder.config import EdgeConfig

    assert {"camera_id": "ICM_CAMERA_ID", "cloud": "ICM_CLOUD", "source": "ICM_SOURCE",
            "spool_dir": "ICM_SPOOL_DIR", "health_listen": "ICM_HEALTH_LISTEN",
            "stall_s": "ICM_STALL_S", "max_backoff_s": "ICM_MAX_BACKOFF_S"}.items() <= \
        env_names(EdgeConfig, EDGE).items()
    assert {"listen": "ICM_LISTEN", "analyst_listen": "ICM_ANALYST_LISTEN", "db": "ICM_CLOUD_DB",
            "device": "ICM_DEVICE", "detectors": "ICM_DETECTORS", "weights_dir": "ICM_DETECTOR_DIR",
            "thumbnail_width": "ICM_THUMBNAIL_WIDTH", "instance": "ICM_INSTANCE",
            "advertise": "ICM_ADVERTISE", "insecure": "ICM_INSECURE",
            "frame_retention_s": "ICM_FRAME_RETENTION_S",
            "max_camera_frames_mb": "ICM_MAX_CAMERA_FRAMES_MB",
            "human_view_retention_s": "ICM_HUMAN_VIEW_RETENTION_S",
            "max_camera_human_views_mb": "ICM_MAX_CAMERA_HUMAN_VIEWS_MB",
            "max_connection_age_s": "ICM_MAX_CONNECTION_AGE_S", "max_workers": "ICM_MAX_WORKERS",
            "edge_stats_s": "ICM_EDGE_STATS_S"}.items() <= env_names(CloudConfig, CLOUD).items()


def test_service_variables_reach_the_config(monkeypatch) -> None:
    from cloud_decoder.config import ENV_PREFIX, CloudConfig
    from icm_app.main import build_parser

    monkeypatch.setenv("ICM_DETECTORS", "a,b")
    monkeypatch.setenv("ICM_INSECURE", "1")
    monkeypatch.setenv("ICM_CLOUD_MAX_BATCH", "4")
    monkeypatch.setenv("ICM_MAX_WORKERS", "64")
    args = build_parser(["cloud"]).parse_args(["cloud", "--max-workers", "16"])
    cfg = config_from_args(CloudConfig, args, env_prefix=ENV_PREFIX)
    assert (cfg.detectors, cfg.insecure, cfg.max_batch, cfg.max_workers) == (["a", "b"], True,
                                                                             4, 16)


def test_a_bad_service_variable_is_one_clear_error(monkeypatch, capsys) -> None:
    from icm_app.main import main

    monkeypatch.setenv("ICM_STALL_S", "soon")
    with pytest.raises(SystemExit) as e:
        main(["edge", "--camera-id", "c", "--source", "x"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "icm edge: error: argument --stall-s: $ICM_STALL_S='soon': invalid float value" in err
    assert "Traceback" not in err


def test_hand_declared_flags_read_variables_like_generated_ones(monkeypatch, capsys) -> None:
    """The flags a command declares itself (add_env_flag: the shared TLS / metrics / logging
    flags, the console's) convert and check their variable after parsing: a bad value is an
    argparse error naming it, and --help still works with it set."""
    from icm_app.main import build_parser, main

    monkeypatch.setenv("ICM_METRICS_PORT", "x")       # was int() while building the parser
    with pytest.raises(SystemExit) as e:
        main(["cloud", "--help"])
    assert e.value.code == 0
    capsys.readouterr()
    for var, value, flag_ in (("ICM_LOG_LEVEL", "verbose", "--log-level"),
                              ("ICM_CONSOLE_PAGE_SIZE", "many", "--page-size"),
                              ("ICM_CONSOLE_SECURE_COOKIES", "maybe", "--secure-cookies")):
        monkeypatch.setenv(var, value)
        with pytest.raises(SystemExit) as e:
            main(["console", "--listen", "127.0.0.1:1"])
        assert e.value.code == 2
        err = capsys.readouterr().err
        assert f"argument {flag_}: ${var}={value!r}" in err and "Traceback" not in err
        monkeypatch.delenv(var)
    monkeypatch.setenv("ICM_CONSOLE_SECURE_COOKIES", "false")   # was on for any non-empty text
    monkeypatch.setenv("ICM_CONSOLE_PAGE_SIZE", "12")
    args = build_parser(["console"]).parse_args(["console", "--page-size", "20"])
    assert (args.secure_cookies, args.page_size) == (False, 20)   # the flag wins
    monkeypatch.setenv("ICM_CONSOLE_SECURE_COOKIES", "yes")
    args = build_parser(["console"]).parse_args(["console"])
    assert (args.secure_cookies, args.page_size) == (True, 12)


def test_train_flags_keep_their_spellings() -> None:
    """The flags running trainings and `icm plan` pass give the same TrainConfig as before."""
    from icm_codec.cli import build_parser
    from icm_codec.train.config import TrainConfig

    argv = ["train", "single", "--data", "A", "B", "C", "--out", "DIR", "--model-id", "ID",
            "--device", "cpu", "--arch", "lite", "--N", "128", "--batch", "2", "--crop", "256",
            "--video-share", "0.15", "--min-scale", "0.5", "--threads", "1", "--lr", "3e-4",
            "--warmup", "500", "--decay", "3000", "--lambda", "0.013", "--steps", "8200",
            "--plan-job", "ID", "--init", "PATH", "--base", "PKG", "--m", "4"]
    args = build_parser().parse_args(argv)
    cfg = config_from_args(TrainConfig, args, kind=args.kind, out=args.out)
    assert cfg == TrainConfig(kind="single", data=["A", "B", "C"], lmbda=0.013, out="DIR",
                              model_id="ID", device="cpu", arch="lite", N=128, batch=2, crop=256,
                              video_share=0.15, min_scale=0.5, threads=1, lr=3e-4, warmup=500,
                              decay=3000, steps=8200, init="PATH", base="PKG", m=4)
    assert args.plan_job == "ID" and args.export is None


def test_plan_keys_are_train_flags() -> None:
    from icm_codec.train.plan import _FLAGS

    before = {"lambda": "--lambda", "steps": "--steps", "batch": "--batch", "crop": "--crop",
              "lr": "--lr", "warmup": "--warmup", "decay": "--decay", "ema": "--ema",
              "arch": "--arch", "N": "--N", "m": "--m", "mask": "--mask", "alpha": "--alpha",
              "video_share": "--video-share", "min_scale": "--min-scale", "seed": "--seed",
              "val_every": "--val-every"}
    assert before.items() <= _FLAGS.items()
    assert not {"data", "base", "init", "device", "threads", "out", "model_id"} & set(_FLAGS)


def test_train_defaults_match_the_training_library() -> None:
    pytest.importorskip("torch")
    from icm_codec.train.config import TrainConfig
    from icm_codec.training import DENSITY_LR_SCALE

    field = {f.name: f for f in dataclasses.fields(TrainConfig)}["density_lr_scale"]
    assert field.default == DENSITY_LR_SCALE


@pytest.mark.parametrize("name", ["edge", "cloud", "console"])
def test_every_service_flag_names_its_variable(name) -> None:
    """docs/services.md: every flag has a variable but these (command line only, or another
    variable does the job)."""
    from icm_app.main import build_parser

    sub = build_parser([name])._subparsers._group_actions[0].choices[name]
    exceptions = {"--help", "--threads", "--exit-when-done", "--adapted"}
    missing = [a.option_strings[0] for a in sub._actions if a.option_strings
               and not exceptions & set(a.option_strings) and "[$" not in (a.help or "")]
    assert not missing, f"icm {name}: flags without a variable: {missing}"


def test_no_variable_is_one_kubernetes_sets() -> None:
    """Kubernetes gives every pod <SERVICE>_SERVICE_HOST, <SERVICE>_PORT, ... of the namespace's
    Services (icm-cloud, icm-cloud-edge, icm-edge, icm-console): no flag may read one."""
    import re

    from cloud_decoder.config import ENV_PREFIX as CLOUD
    from cloud_decoder.config import CloudConfig
    from edge_encoder.config import ENV_PREFIX as EDGE
    from edge_encoder.config import EdgeConfig

    k8s = re.compile(r"ICM_(CLOUD_EDGE|CLOUD|EDGE|CONSOLE)_(SERVICE_HOST|SERVICE_PORT|PORT)(_|$)")
    names = [*env_names(CloudConfig, CLOUD).values(), *env_names(EdgeConfig, EDGE).values()]
    assert not [n for n in names if k8s.match(n)]


def test_plan_passes_a_switch_as_its_flag_alone(monkeypatch) -> None:
    """A TrainConfig bool (a switch, e.g. --z-noise) in a plan job: the flag, without a value."""
    from pathlib import Path

    from icm_codec.train import plan

    monkeypatch.setitem(plan._FLAGS, "toy", "--toy")
    monkeypatch.setitem(plan._SWITCHES, "toy", False)
    monkeypatch.setitem(plan._FLAGS, "fast", "--no-fast")
    monkeypatch.setitem(plan._SWITCHES, "fast", True)
    for toy, fast, expected in ((True, True, ["--toy"]), (False, False, ["--no-fast"]),
                                (False, True, [])):
        job = plan.Job("j", "single", {"lambda": 0.01, "steps": 5, "toy": toy, "fast": fast},
                       ["photos"])
        args = plan.train_args(job, plan.Plan({"j": job}), Path("/runs"), Path("/data"), "cuda",
                               shipped=Path("/nowhere"))
        assert [a for a in args if a in ("--toy", "--no-fast", "True", "False")] == expected
