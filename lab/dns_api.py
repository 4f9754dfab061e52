"""The lab's stand-in for the Cloudflare and Route 53 DNS APIs, on the bridge address.

certbot's dns-cloudflare and dns-route53 plugins talk to it as they would to the providers
(their SDKs pointed here by the acme_dns_api_url setting), and each record they write lands in
Knot's zone through knotc, where the DNS-01 Pebble looks it up: a certificate is issued only if
the plugin's calls were right. It checks what the providers check first: Cloudflare's API
token (Bearer), Route 53's AWS Signature Version 4 against the IAM user's secret key. The subset
is what the two plugins call; every call is written to a journal the tests read.

Run by lab/core.py as a lab process: ``python -m lab.dns_api CONFIG`` (CONFIG: api.json).
"""

from __future__ import annotations

import hashlib
import hmac
import itertools
import json
import re
import secrets
import string
import subprocess
import sys
import threading
import time
import xml.etree.ElementTree as ElementTree
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qsl, quote, urlsplit

CLOUDFLARE_PREFIX = "/client/v4"
ROUTE53_PREFIX = "/2013-04-01"
ROUTE53_NAMESPACE = "https://route53.amazonaws.com/doc/2013-04-01/"
ZONE_ID = "lab0zone0id"
HOSTED_ZONE_ID = "Z0LAB0ZONE"
CONFIG_FILE = "api.json"
JOURNAL_FILE = "api-journal.jsonl"
# Request bodies are a few hundred bytes; a bound keeps a stray client from growing us.
MOST_BODY_BYTES = 64 * 1024


def credentials() -> dict[str, str]:
    """A Cloudflare API token and an AWS access key pair, new at each lab-up."""
    key_id = "AKIA" + "".join(
        secrets.choice(string.ascii_uppercase + string.digits) for _ in range(16)
    )
    return {
        "cloudflare_api_token": secrets.token_urlsafe(30),
        "route53_access_key_id": key_id,
        "route53_secret_access_key": secrets.token_urlsafe(30),
    }


class Zone:
    """Knot's zone, changed through its control socket, one transaction at a time."""

    def __init__(self, name: str, knotc: list[str]) -> None:
        self.name = name
        self.knotc = knotc
        self.lock = threading.Lock()
        # Cloudflare's records by id: (name, content).
        self.records: dict[str, tuple[str, str]] = {}
        self.ids = itertools.count(1)

    def owner(self, name: str) -> str | None:
        """The owner relative to the zone, or None for a name outside it."""
        name = name.rstrip(".").lower()
        if name == self.name:
            return "@"
        if name.endswith("." + self.name):
            return name[: -len(self.name) - 1]
        return None

    def change(self, owner: str, replace: bool, add: list[str], remove: list[str]) -> None:
        with self.lock:
            self._control("zone-begin", self.name)
            try:
                if replace:
                    self._control("zone-unset", self.name, owner, "TXT", allowed=True)
                for value in remove:
                    self._control(
                        "zone-unset", self.name, owner, "TXT", quoted(value), allowed=True
                    )
                for value in add:
                    self._control("zone-set", self.name, owner, "60", "TXT", quoted(value))
                self._control("zone-commit", self.name)
            except RuntimeError:
                self._control("zone-abort", self.name, allowed=True)
                raise

    def _control(self, *arguments: str, allowed: bool = False) -> None:
        result = subprocess.run([*self.knotc, *arguments], capture_output=True, text=True)
        if result.returncode and not allowed:
            raise RuntimeError(f"knotc {' '.join(arguments)}: {result.stderr or result.stdout}")


def quoted(value: str) -> str:
    value = value.strip('"')
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


class Handler(BaseHTTPRequestHandler):
    server: Server

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_DELETE(self) -> None:
        self._dispatch("DELETE")

    def log_message(self, format: str, *args) -> None:
        print(f"{self.address_string()} {format % args}", flush=True)

    def _dispatch(self, method: str) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        if length > MOST_BODY_BYTES:
            self._answer(413, "text/plain", b"too large")
            return
        self.body = self.rfile.read(length)
        url = urlsplit(self.path)
        self.query = parse_qsl(url.query, keep_blank_values=True)
        try:
            if url.path.startswith(CLOUDFLARE_PREFIX + "/"):
                self._cloudflare(method, url.path[len(CLOUDFLARE_PREFIX) :])
            elif url.path.startswith(ROUTE53_PREFIX + "/"):
                self._route53(method, url.path, url.path[len(ROUTE53_PREFIX) :])
            else:
                self._answer(404, "text/plain", b"not an API this stand-in serves")
        except RuntimeError as error:
            print(f"failed: {error}", flush=True)
            self._answer(500, "text/plain", str(error).encode())

    def _answer(self, status: int, content_type: str, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    # Cloudflare: zones, dns_records (list, create, delete), a Bearer token.

    def _cloudflare(self, method: str, path: str) -> None:
        token = self.server.config["cloudflare_api_token"]
        if not hmac.compare_digest(self.headers.get("Authorization", ""), f"Bearer {token}"):
            self.server.journal("cloudflare", "refused", reason="token")
            self._cloudflare_answer(403, None, errors=[(9109, "Invalid access token")])
            return
        query = dict(self.query)
        zone = self.server.zone
        if method == "GET" and path == "/zones":
            found = query.get("name") == zone.name and query.get("page", "1") == "1"
            zones = [{"id": ZONE_ID, "name": zone.name, "status": "active"}] if found else []
            self._cloudflare_answer(200, zones)
            return
        records = f"/zones/{ZONE_ID}/dns_records"
        if method == "GET" and path == records:
            listed = [
                {"id": record_id, "type": "TXT", "name": name, "content": content, "ttl": 120}
                for record_id, (name, content) in zone.records.items()
                if query.get("name.exact", name) == name
                and query.get("content.exact", content) == content
            ]
            self._cloudflare_answer(200, listed if query.get("page", "1") == "1" else [])
            return
        if method == "POST" and path == records:
            record = json.loads(self.body or b"{}")
            name, content = record.get("name", ""), record.get("content", "")
            owner = zone.owner(name)
            if record.get("type") != "TXT" or owner is None:
                self._cloudflare_answer(400, None, errors=[(9000, f"not a TXT in {zone.name}")])
                return
            zone.change(owner, replace=False, add=[content], remove=[])
            record_id = f"{next(zone.ids):032x}"
            zone.records[record_id] = (name, content)
            self.server.journal("cloudflare", "create", name=name)
            self._cloudflare_answer(200, {"id": record_id, **record})
            return
        if method == "DELETE" and path.startswith(records + "/"):
            record_id = path.rsplit("/", 1)[1]
            if record_id not in zone.records:
                self._cloudflare_answer(404, None, errors=[(81044, "Record does not exist.")])
                return
            name, content = zone.records.pop(record_id)
            zone.change(zone.owner(name) or "@", replace=False, add=[], remove=[content])
            self.server.journal("cloudflare", "delete", name=name)
            self._cloudflare_answer(200, {"id": record_id})
            return
        self._cloudflare_answer(404, None, errors=[(7003, f"no route for {method} {path}")])

    def _cloudflare_answer(self, status, result, errors=()) -> None:
        body = {
            "success": status == 200,
            "errors": [{"code": code, "message": message} for code, message in errors],
            "messages": [],
            "result": result,
        }
        if isinstance(result, list):
            body["result_info"] = {"page": 1, "per_page": 100, "count": len(result)}
        self._answer(status, "application/json", json.dumps(body).encode())

    # Route 53: ListHostedZones, ChangeResourceRecordSets, GetChange; Signature Version 4.

    def _route53(self, method: str, raw_path: str, path: str) -> None:
        refused = self._signature_refused(method, raw_path)
        if refused:
            self.server.journal("route53", "refused", reason=refused)
            self._route53_error(403, "SignatureDoesNotMatch", refused)
            return
        zone = self.server.zone
        if method == "GET" and path == "/hostedzone":
            self._route53_answer(
                "ListHostedZonesResponse",
                f"<HostedZones><HostedZone><Id>/hostedzone/{HOSTED_ZONE_ID}</Id>"
                f"<Name>{zone.name}.</Name><CallerReference>lab</CallerReference>"
                "<Config><PrivateZone>false</PrivateZone></Config>"
                "<ResourceRecordSetCount>3</ResourceRecordSetCount></HostedZone></HostedZones>"
                "<IsTruncated>false</IsTruncated><MaxItems>100</MaxItems>",
            )
            return
        if method == "POST" and re.fullmatch(f"/hostedzone/{HOSTED_ZONE_ID}/rrset/?", path):
            for action, name, values in route53_changes(self.body):
                owner = zone.owner(name)
                if owner is None:
                    self._route53_error(400, "InvalidChangeBatch", f"{name} is not in the zone")
                    return
                if action == "DELETE":
                    zone.change(owner, replace=True, add=[], remove=[])
                else:
                    zone.change(owner, replace=True, add=values, remove=[])
                self.server.journal("route53", action.lower(), name=name, values=len(values))
            self._route53_answer("ChangeResourceRecordSetsResponse", self._change_info())
            return
        if method == "GET" and path.startswith("/change/"):
            self._route53_answer("GetChangeResponse", self._change_info())
            return
        self._route53_error(404, "NoSuchResource", f"no route for {method} {path}")

    def _change_info(self) -> str:
        submitted = time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime())
        # Knot serves a change once committed: it is in sync at once.
        return (
            "<ChangeInfo><Id>/change/C0LAB</Id><Status>INSYNC</Status>"
            f"<SubmittedAt>{submitted}</SubmittedAt></ChangeInfo>"
        )

    def _route53_answer(self, element: str, inner: str) -> None:
        body = f'<?xml version="1.0" encoding="UTF-8"?><{element} xmlns="{ROUTE53_NAMESPACE}">'
        self._answer(200, "text/xml", (body + inner + f"</{element}>").encode())

    def _route53_error(self, status: int, code: str, message: str) -> None:
        body = (
            f'<?xml version="1.0"?><ErrorResponse xmlns="{ROUTE53_NAMESPACE}"><Error>'
            f"<Type>Sender</Type><Code>{code}</Code><Message>{message}</Message></Error>"
            "<RequestId>lab</RequestId></ErrorResponse>"
        )
        self._answer(status, "text/xml", body.encode())

    def _signature_refused(self, method: str, raw_path: str) -> str:
        """Why the request's AWS Signature Version 4 is not the configured key's, or ""."""
        match = re.fullmatch(
            r"AWS4-HMAC-SHA256 Credential=([^/]+)/(\d{8})/([^/]+)/route53/aws4_request, "
            r"SignedHeaders=([a-z0-9;-]+), Signature=([0-9a-f]{64})",
            self.headers.get("Authorization", ""),
        )
        if not match:
            return "no Signature Version 4 for route53"
        key_id, day, region, signed_headers, signature = match.groups()
        if key_id != self.server.config["route53_access_key_id"]:
            return f"unknown access key {key_id}"
        canonical_query = "&".join(
            f"{quote(key, safe='-_.~')}={quote(value, safe='-_.~')}"
            for key, value in sorted(self.query)
        )
        headers = "".join(
            f"{name}:{' '.join((self.headers.get(name) or '').split())}\n"
            for name in signed_headers.split(";")
        )
        payload = self.headers.get("X-Amz-Content-SHA256") or hashlib.sha256(self.body).hexdigest()
        request = "\n".join([method, raw_path, canonical_query, headers, signed_headers, payload])
        scope = f"{day}/{region}/route53/aws4_request"
        to_sign = "\n".join(
            [
                "AWS4-HMAC-SHA256",
                self.headers.get("X-Amz-Date", ""),
                scope,
                hashlib.sha256(request.encode()).hexdigest(),
            ]
        )
        key = ("AWS4" + self.server.config["route53_secret_access_key"]).encode()
        for part in (day, region, "route53", "aws4_request"):
            key = hmac.new(key, part.encode(), hashlib.sha256).digest()
        expected = hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()
        if not hmac.compare_digest(expected, signature):
            return "the signature is not the secret key's"
        return ""


def route53_changes(body: bytes) -> list[tuple[str, str, list[str]]]:
    """(action, name, TXT values) of a ChangeResourceRecordSets request."""
    root = ElementTree.fromstring(body)
    namespace = {"r": ROUTE53_NAMESPACE}
    changes = []
    for change in root.iterfind(".//r:Change", namespace):
        record_set = change.find("r:ResourceRecordSet", namespace)
        values = [
            element.text or ""
            for element in record_set.iterfind(".//r:ResourceRecord/r:Value", namespace)
        ]
        changes.append(
            (
                change.findtext("r:Action", "", namespace),
                record_set.findtext("r:Name", "", namespace),
                values,
            )
        )
    return changes


class Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, config: dict, journal_file: Path) -> None:
        self.config = config
        self.zone = Zone(config["zone"], config["knotc"])
        self.journal_file = journal_file
        self.journal_lock = threading.Lock()
        super().__init__((config["address"], config["port"]), Handler)

    def journal(self, api: str, call: str, **details) -> None:
        line = json.dumps({"api": api, "call": call, "at": time.time(), **details})
        with self.journal_lock, self.journal_file.open("a") as journal:
            journal.write(line + "\n")


def main() -> None:
    config_file = Path(sys.argv[1])
    config = json.loads(config_file.read_text())
    Server(config, config_file.parent / JOURNAL_FILE).serve_forever()


if __name__ == "__main__":
    main()
