#!/usr/bin/env python3
"""Send one message with smtplib and print every reply as JSON.

Used by willi's real-peer tests (pySMTP in test/harness_test.go). The single
argument is a JSON object: server ("host:port"), source (local address to
bind, optional), helo, starttls (bool), from, to (list), message_file,
mail_options (list), timeout (seconds).
"""
import json
import smtplib
import ssl
import sys


def reply(code, text):
    if isinstance(text, bytes):
        text = text.decode("latin-1")
    return {"code": code, "text": text}


def main():
    spec = json.loads(sys.argv[1])
    host, port = spec["server"].rsplit(":", 1)
    res = {"rcpt": []}
    source = (spec["source"], 0) if spec.get("source") else None
    try:
        s = smtplib.SMTP(timeout=spec.get("timeout", 60), source_address=source)
        res["banner"] = reply(*s.connect(host, int(port)))
        s._host = host  # older smtplib leaves it empty: starttls needs it for SNI
        res["ehlo"] = reply(*s.ehlo(spec["helo"]))
        if spec.get("starttls"):
            ctx = ssl.create_default_context()
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
            res["starttls"] = reply(*s.starttls(context=ctx))
            res["tls_version"] = s.sock.version()
            res["ehlo_tls"] = reply(*s.ehlo(spec["helo"]))
        res["mail"] = reply(*s.mail(spec["from"], spec.get("mail_options") or []))
        ok = False
        for rcpt in spec["to"]:
            r = reply(*s.rcpt(rcpt))
            res["rcpt"].append(r)
            ok = ok or r["code"] in (250, 251)
        if ok:
            with open(spec["message_file"], "rb") as f:
                msg = f.read()
            try:
                res["data"] = reply(*s.data(msg))
            except smtplib.SMTPDataError as e:
                res["data"] = reply(e.smtp_code, e.smtp_error)
        else:
            s.rset()
        res["quit"] = reply(*s.quit())
    except Exception as e:  # report, the Go side decides
        res["error"] = "%s: %s" % (type(e).__name__, e)
    json.dump(res, sys.stdout)


if __name__ == "__main__":
    main()
