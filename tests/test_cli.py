"""The `commlab` command: a run prints its summary; bad values exit non-zero without a traceback."""
import subprocess
import sys

from lab.cli import main


def test_run_prints_summary_and_run_directory(tmp_path, capsys):
    code = main(["run", "--technique", "local_sgd", "--workers", "4", "--sync-period", "8", "--steps", "32",
                 "--dataset", "digits", "--model", "mlp", "--runs-dir", str(tmp_path), "--quiet"])
    out = capsys.readouterr().out
    assert code == 0
    assert "accuracy" in out and "bytes sent" in out and "simulated time" in out
    assert str(tmp_path) in out and any(tmp_path.iterdir())


def test_bad_value_prints_the_validation_message_and_exits_2():
    p = subprocess.run([sys.executable, "-m", "lab.cli", "run", "--sync-period", "0"], capture_output=True,
                       text=True)
    assert p.returncode == 2
    assert "sync_period=0 is invalid" in p.stderr and "Traceback" not in p.stderr


def test_help_documents_every_option():
    p = subprocess.run([sys.executable, "-m", "lab.cli", "run", "--help"], capture_output=True, text=True)
    for opt in ("--technique", "--workers", "--sync-period", "--compression-ratio", "--topology", "--backend",
                "--client-fraction", "--dirichlet-alpha"):
        assert opt in p.stdout
