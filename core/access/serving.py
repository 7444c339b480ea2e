"""Whether the dashboard may run without login: only for one user on this machine (a loopback address).

Streamlit listens where `server.address` says (`.streamlit/config.toml` sets "localhost"); an empty address
means every interface. With login "none" the session acts as the local administrator, so serving on any
other address, or answering a browser that connects from another machine, is refused with `NETWORK_MESSAGE`.
"""

from __future__ import annotations

import ipaddress

LOOPBACK_NAMES = ("localhost", "localhost.localdomain", "ip6-localhost", "ip6-loopback")
NETWORK_MESSAGE = (
    "This dashboard is served on a network address ({address}) with login off, so anyone who reaches it would "
    "act as its administrator. Either serve it on this machine only (`server.address = \"localhost\"` in "
    ".streamlit/config.toml, the default), or configure login in the settings file (cellscope.toml, "
    "`[access] login = \"password\"` with users added by `python -m core users add NAME --role ROLE`, or "
    "`login = \"oidc\"`): see \"Serving to a class or a lab\" in the README.")


def is_loopback(address: str | None) -> bool:
    """'localhost', 127.x.x.x or ::1; an empty address (every interface) or any other one is not."""
    address = (address or "").strip().strip("[]").lower()
    if not address:
        return False
    if address in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False


def local_only_refusal(server_address: str | None, client_address: str | None) -> str | None:
    """With login "none": the message to show instead of the app, or None when it is served on this machine
    only (a loopback server address, and the browser, when known, connecting from this machine)."""
    if not is_loopback(server_address):
        return NETWORK_MESSAGE.format(address=server_address or "every interface")
    if client_address and not is_loopback(client_address):
        return NETWORK_MESSAGE.format(address=f"a browser at {client_address}")
    return None
