"""deployments/compose.yaml: the Prefect API (no authentication unless configured) is published on
the host's loopback only, by default (R18)."""

from __future__ import annotations

import ipaddress
import re
from pathlib import Path

import yaml

COMPOSE = Path(__file__).resolve().parents[2] / "deployments" / "compose.yaml"


def _defaults(text: str, env: dict) -> str:
    """Compose's interpolation of ``${VAR}``, ``${VAR:-default}`` and ``${VAR:?message}`` with ``env``."""
    def sub(m):
        name, op, arg = m.group(1), m.group(2), m.group(3)
        val = env.get(name, "")
        if op == ":?" and not val:
            return "required"
        return val if val or op != ":-" else arg
    return re.sub(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:[-?])([^}]*))?\}", sub, text)


def _published(env: dict) -> list[tuple[str, str, str]]:
    """(service, host address, host port) of every published port; "" when on all interfaces."""
    spec = yaml.safe_load(_defaults(COMPOSE.read_text(), env))
    out = []
    for name, svc in spec["services"].items():
        assert svc.get("network_mode") != "host", f"{name}: network_mode host publishes every port"
        for p in svc.get("ports", []):
            if isinstance(p, dict):                      # long syntax
                out.append((name, str(p.get("host_ip", "")), str(p.get("published", ""))))
                continue
            p = str(p).split("/")[0]
            m = re.fullmatch(r"(?:(\[[^\]]+\]|[^:]+):)?(?:([^:]*):)?([^:]+)", p)
            assert m, p
            host_ip, host_port = (m.group(1) or ""), (m.group(2) or "")
            if m.group(1) and m.group(2) is None:          # "HOST:CONTAINER": the first field is a port
                host_ip, host_port = "", m.group(1)
            out.append((name, host_ip.strip("[]"), host_port))
    return out


def test_no_port_is_published_on_all_interfaces_by_default():
    ports = _published({})
    assert ports, "the server publishes the UI/API"
    for name, ip, _port in ports:
        assert ip, f"{name}: port published on all host interfaces"
        assert ipaddress.ip_address(ip).is_loopback, f"{name}: published on {ip}"


def test_the_published_address_and_port_are_the_operators_choice():
    ports = _published({"QLCP_UI_BIND": "192.0.2.7", "QLCP_UI_PORT": "4300"})
    assert ("server", "192.0.2.7", "4300") in ports


def test_the_server_and_its_clients_share_one_auth_string():
    spec = yaml.safe_load(_defaults(COMPOSE.read_text(), {"PREFECT_AUTH_STRING": "admin:pw"}))
    sv = spec["services"]
    assert sv["server"]["environment"]["PREFECT_SERVER_API_AUTH_STRING"] == "admin:pw"
    for name in ("serve", "sensor", "worker", "deploy-pool"):
        assert sv[name]["environment"]["PREFECT_API_AUTH_STRING"] == "admin:pw", name


def test_results_are_served_read_only_beside_the_ui():
    ports = _published({"QLCP_UI_BIND": "192.0.2.7", "QLCP_RESULTS_PORT": "4301"})
    assert ("results", "192.0.2.7", "4301") in ports          # the server's address, its own port
    assert ("results", "127.0.0.1", "4201") in _published({})
    spec = yaml.safe_load(_defaults(COMPOSE.read_text(), {}))
    sv = spec["services"]
    assert sv["results"]["command"][:1] == ["/data/red"]
    assert [v["read_only"] for v in sv["results"]["volumes"] if v["target"] == "/data/red"] == [True]
    for name in ("serve", "worker"):                          # the flow runs link their images there
        assert sv[name]["environment"]["QLCP_RESULTS_URL"] == "http://localhost:4201/", name
