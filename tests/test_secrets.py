"""ablate.secrets: what is masked (URL passwords, key=value credentials, YAML/JSON secret values) and what
is left alone (spec fields such as `tokens`, URLs without a password), in text, nested data and logs."""

from __future__ import annotations

import logging

import pytest

from ablate.secrets import RedactingFilter, redact, redact_text, redact_url

PW = "Zq7-s3cret"


@pytest.mark.parametrize(
    "text",
    [
        f"postgresql://bob:{PW}@db.example:5432/ablate",
        f"postgresql+psycopg://bob:{PW}@db/x?options=-csearch_path%3Ds",
        f"tracking:\n  db: 'postgres://u:{PW}@h/d'\n",
        f"error: cannot open mysql://root:{PW}@10.0.0.1/db: refused",
        f"https://user:{PW}@mirror.invalid/data and s3://key:{PW}@bucket/x",
        f"postgresql://h/d?sslmode=require&password={PW}&x=1",
        f"mlflow server --token={PW} PGPASSWORD={PW}",
        f"password: {PW}\n",
        f"  auth_token: '{PW}'",
        f'{{"api_key": "{PW}", "n": 1}}',
        f"{{secret_key: {PW}, a: 1}}",
        f"postgresql://bob:p@ss{PW}@h/d",  # a raw '@' in the password
    ],
)
def test_secrets_are_masked(text):
    out = redact_text(text)
    assert PW not in out and "***" in out


@pytest.mark.parametrize(
    "text",
    [
        "distill:\n  tokens: 2k\n  eval_tokens: 4k\n",
        "sqlite:///.ablate/ablate.db",
        "http://127.0.0.1:5000/#/compare-runs?runs=%5B%22a%22%5D",
        "postgresql://bob@db.example:5432/ablate",
        "s3://bucket/key",
        "a loss of 3.2 at step 4",
    ],
)
def test_the_rest_is_left_alone(text):
    assert redact_text(text) == text


def test_redact_url_and_nested_data():
    from sqlalchemy.engine import make_url

    assert redact_url(make_url(f"postgresql://bob:{PW}@h:5432/d")) == "postgresql://bob:***@h:5432/d"
    assert redact_url(f"postgresql://bob:{PW}@h/d") == "postgresql://bob:***@h/d"
    data = {"db": f"mysql://a:{PW}@c/d", "password": PW, "tokens": 5, "trials": [{"error": f"x://u:{PW}@w"}]}
    out = redact(data)
    assert PW not in repr(out) and out["tokens"] == 5 and out["password"] == "***"
    assert data["password"] == PW  # a copy


def test_log_records_are_masked(caplog):
    logger = logging.getLogger("ablate.test_secrets")
    caplog.handler.addFilter(RedactingFilter())
    try:
        logger.warning("cannot open %s", f"postgresql://bob:{PW}@h/d")
        try:
            raise RuntimeError(f"boom postgresql://bob:{PW}@h/d")
        except RuntimeError:
            logger.exception("failed")
    finally:
        caplog.handler.removeFilter(caplog.handler.filters[-1])
    text = caplog.text
    assert PW not in text and "postgresql://bob:***@h/d" in text


def test_every_logger_is_masked_once_installed(capsys):
    """MLflow's loggers have handlers of their own that do not propagate to the root."""
    from ablate.secrets import install_log_redaction

    previous = logging.getLogRecordFactory()
    logger = logging.getLogger("ablate.test_secrets.own")
    handler = logging.StreamHandler()
    logger.addHandler(handler)
    logger.propagate = False
    try:
        install_log_redaction()
        install_log_redaction()  # once
        logger.warning("store %s", f"postgresql://bob:{PW}@h/d")
    finally:
        logging.setLogRecordFactory(previous)
        logger.removeHandler(handler)
    err = capsys.readouterr().err
    assert PW not in err and "postgresql://bob:***@h/d" in err
