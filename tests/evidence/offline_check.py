"""Check a yipanqi evidence bundle with nothing but Python and `cryptography` (the procedure of the
security notes, verbatim). Usage: python offline_check.py bundle.json  -> exit 0 if it verifies."""

import base64
import hashlib
import json
import sys

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

bundle = json.load(open(sys.argv[1], encoding="utf-8"))
keys = {k["keyid"]: k["public_key"] for k in bundle["keys"]}  # check them against the peers' own word!
FIELDS = [  # every field but entry_hash, plus "format"
    "seq",
    "kind",
    "source_id",
    "message_id",
    "message_type",
    "peer",
    "occurred_at",
    "body_digest",
    "request_keyid",
    "request_public_key",
    "request_path",
    "request_digest",
    "request_signature_input",
    "request_signature",
    "answer_status",
    "answer_content_type",
    "answer_digest",
    "answer_keyid",
    "answer_public_key",
    "answer_signature_input",
    "answer_signature",
    "sealed_at",
    "prev_hash",
]
BATCH = "/peer/v1/batch"  # a message received in a batch: the sender signed the batch's body
BOUND = 'yp=("@status" "content-type" "content-digest" "@path";req "content-digest";req "signature";req;key="yp");'  # noqa: E501


def ok(keyid, signature, message):
    key = Ed25519PublicKey.from_public_bytes(
        base64.urlsafe_b64decode(keys[keyid] + "=" * (-len(keys[keyid]) % 4))
    )
    try:
        key.verify(signature, message)
        return True
    except Exception:
        return False


def sig(value):  # "yp=:<base64>:" -> the 64 bytes
    return base64.b64decode(value[len("yp=:") : -1])


def digest(body):
    return "sha-256=:" + base64.b64encode(hashlib.sha256(body).digest()).decode() + ":"


bad, prev, hashes, expect = [], bundle["prev_hash"], {}, bundle["first_seq"]
batches, items_of = bundle.get("batches", {}), {}  # kept batch bodies (with --include-bodies)
for e in sorted(bundle["entries"], key=lambda e: e["seq"]):
    s = e["seq"]
    if s != expect:
        bad.append((expect, "missing (deleted)"))
    elif e["prev_hash"] != prev:
        bad.append((s, "out of order, or the entry before it replaced"))
    expect = s + 1
    canon = json.dumps(
        {**{f: e[f] for f in FIELDS}, "format": "yipanqi-evidence/1"},
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=True,
    ).encode()
    if hashlib.sha256(canon).hexdigest() != e["entry_hash"]:
        bad.append((s, "entry altered"))
    prev = hashes[s] = e["entry_hash"]
    if e["request_signature_input"] and e["request_digest"]:
        base = (
            f'"@method": POST\n"@path": {e["request_path"]}\n"content-type": application/json\n'
            f'"content-digest": {e["request_digest"]}\n'
            f'"@signature-params": {e["request_signature_input"][3:]}'
        )
        if not ok(e["request_keyid"], sig(e["request_signature"]), base.encode()):
            bad.append((s, "request signature"))
    if e["answer_signature"]:
        bound = ""
        if e["answer_signature_input"].startswith(BOUND):
            bound = (
                f'"@path";req: {e["request_path"]}\n"content-digest";req: {e["request_digest"]}\n'
                f'"signature";req;key="yp": {e["request_signature"][3:]}\n'
            )
        base = (
            f'"@status": {e["answer_status"]}\n"content-type": {e["answer_content_type"]}\n'
            f'"content-digest": {e["answer_digest"]}\n{bound}'
            f'"@signature-params": {e["answer_signature_input"][3:]}'
        )
        if not ok(e["answer_keyid"], sig(e["answer_signature"]), base.encode()):
            bad.append((s, "answer signature"))
    body = bundle["bodies"].get(str(s))
    if body and digest(base64.b64decode(body)) != e["body_digest"]:
        bad.append((s, "body does not match its digest"))
    batch = batches.get(e["request_digest"] or "") if e["request_path"] == BATCH else None
    if batch:  # the signed digest is the batch body's, and one of its items is this message's body
        if batch not in items_of:
            raw = base64.b64decode(batch)
            try:
                items = [i.encode("utf-8", "surrogatepass") for i in json.loads(raw)["items"]]
            except Exception:
                items = []
            items_of[batch] = (digest(raw), {digest(i): i for i in items})
        signed, items = items_of[batch]
        if signed != e["request_digest"]:
            bad.append((s, "batch body does not match its signed digest"))
        elif e["body_digest"] not in items or (body and items[e["body_digest"]] != base64.b64decode(body)):
            bad.append((s, "the message is not in its batch"))
for c in bundle["checkpoints"]:
    payload = json.dumps(
        {
            "format": "yipanqi-evidence-checkpoint/1",
            "node": c["node_id"],
            "seq": c["seq"],
            "head": c["head_hash"],
            "signed_at": c["signed_at"],
            "keyid": c["keyid"],
        },
        sort_keys=True,
        separators=(",", ":"),
    ).encode()
    if (
        not ok(c["keyid"], base64.b64decode(c["signature"]), payload)
        or hashes.get(c["seq"]) != c["head_hash"]
    ):
        bad.append((c["seq"], "checkpoint"))
for s, what in sorted(bad):
    print(f"entry {s}: {what}")
print(
    f"{len(bundle['entries'])} entries, {len(bundle['checkpoints'])} checkpoints:", "BROKEN" if bad else "OK"
)
sys.exit(1 if bad else 0)
