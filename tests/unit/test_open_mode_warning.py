"""run.py says which mode serves and warns when open mode is reachable beyond loopback."""

import logging

import run
import settings


class Bound:
    """What `warn_if_open` reads of a listening socket: its address."""

    def __init__(self, address):
        self.address = address

    def getsockname(self):
        return (self.address, 8000)


def test_open_mode_on_a_public_address_warns_and_names_it(caplog):
    with caplog.at_level(logging.INFO, logger="notify_server"):
        run.warn_if_open(settings.Settings(), [Bound("127.0.0.1"), Bound("0.0.0.0"),
                                                Bound("fe80::1%eth0")])
    [record] = caplog.records
    assert record.levelno == logging.WARNING
    assert "open mode on 0.0.0.0, fe80::1%eth0" in record.getMessage()
    assert "NOTIFY_AUTH_SECRET" in record.getMessage()


def test_open_mode_on_loopback_and_token_mode_anywhere_do_not_warn(caplog):
    with caplog.at_level(logging.INFO, logger="notify_server"):
        run.warn_if_open(settings.Settings(), [Bound("127.0.0.1"), Bound("::1")])
        run.warn_if_open(settings.Settings(auth_secret=("s" * 32,)), [Bound("0.0.0.0")])
    assert [r.levelno for r in caplog.records] == [logging.INFO]
    assert "token mode" in caplog.records[0].getMessage()
