import pytest

from tests.serve.served import stop_served


@pytest.fixture(scope="session", autouse=True)
def _stop_the_server_last():
    """The served model (tests/serve/served.py) lives for the session; stopping it is checked at its end."""
    yield
    stop_served()
