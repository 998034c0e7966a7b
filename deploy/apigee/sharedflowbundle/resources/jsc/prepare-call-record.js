/*
 * JS-PrepareCallRecord: computes what an Apigee message template cannot.
 * Message templates have no arithmetic and no conditionals (the template
 * function list is string functions only: escapeJSON, firstnonnull,
 * substring, replaceAll, hashes, time formats...), so the two durations and
 * the identity.auth label are derived here and read by AM-BuildCallRecord,
 * and so is the forwarded client address (templates cannot split a list).
 *
 * Contract (kept in sync with DeriveVars in deploy/local/standin/apigee/bundle.go; a Go
 * test runs this file under node and compares):
 *   timescale.total_response_time  = system.timestamp - client.received.start.timestamp
 *   timescale.target_response_time = target.received.end.timestamp - target.sent.start.timestamp
 *     (ms; set only when both are 1-15 digit epoch-ms values, start > 0, end >= start)
 *   timescale.identity.auth = timescale.in.auth if a proxy set it, else
 *     "jwt"    when VerifyJWT policy "VJ-VerifyJWT" validated a token,
 *     "oauth2" when OAuthV2 VerifyAccessToken ran (it sets access_token),
 *     "apikey" when VerifyAPIKey ran (it sets client_id),
 *     "none"   otherwise.
 *   timescale.forwarded_client_ip = the X-Forwarded-For entry at index
 *     timescale.in.xff_index (default 0), when it is a plain IPv4 or IPv6
 *     address (no zone, no port, IPv4 without leading zeros); else unset.
 *     The whole header is read from request.header.X-Forwarded-For.values.string:
 *     request.header.X-Forwarded-For alone is only its first value (Apigee's
 *     antipattern page "Access multi-value HTTP headers incorrectly").
 *     Indices count as Apigee's environment client IP resolution does
 *     (ipHeaderIndex): 0, 1, ... from the left, -1, -2, ... from the right.
 *
 * Written as ES5 for Apigee's Rhino runtime. It only sets timescale.*
 * variables and swallows every error: the policy also has
 * continueOnError="true", so it can never fail an API call.
 */
(function () {
  "use strict";

  function str(name) {
    var v = context.getVariable(name);
    return v === null || v === undefined ? "" : String(v);
  }

  // Epoch milliseconds, or -1 when absent or not plain digits. 15 digits
  // keep the value exact in a JavaScript number.
  function millis(name) {
    var s = str(name).trim();
    return /^[0-9]{1,15}$/.test(s) ? Number(s) : -1;
  }

  function setDuration(name, endVar, startVar) {
    var end = millis(endVar);
    var start = millis(startVar);
    if (start > 0 && end >= start) {
      context.setVariable(name, String(end - start));
    }
  }

  function ipv4(s) {
    var parts = s.split(".");
    if (parts.length !== 4) {
      return false;
    }
    for (var i = 0; i < 4; i++) {
      if (!/^(0|[1-9][0-9]{0,2})$/.test(parts[i]) || Number(parts[i]) > 255) {
        return false;
      }
    }
    return true;
  }

  // Hex groups of 1-4 digits, at most one "::", an IPv4 tail allowed in
  // the last 32 bits: RFC 4291 section 2.2's text forms.
  function ipv6(s) {
    var halves = s.split("::");
    if (halves.length > 2) {
      return false;
    }
    var groups = 0;
    for (var h = 0; h < halves.length; h++) {
      if (halves[h] === "") {
        continue;
      }
      var parts = halves[h].split(":");
      for (var i = 0; i < parts.length; i++) {
        var last = h === halves.length - 1 && i === parts.length - 1;
        if (last && parts[i].indexOf(".") >= 0) {
          if (!ipv4(parts[i])) {
            return false;
          }
          groups += 2;
        } else if (/^[0-9A-Fa-f]{1,4}$/.test(parts[i])) {
          groups += 1;
        } else {
          return false;
        }
      }
    }
    return halves.length === 2 ? groups <= 7 : groups === 8;
  }

  function forwardedClientIP() {
    var header = str("request.header.X-Forwarded-For.values.string");
    if (header === "") {
      return "";
    }
    var index = str("timescale.in.xff_index").trim();
    index = /^-?[0-9]{1,3}$/.test(index) ? Number(index) : 0;
    var hops = header.split(",");
    var i = index >= 0 ? index : hops.length + index;
    if (i < 0 || i >= hops.length) {
      return "";
    }
    // HTTP's optional white space is spaces and tabs, nothing else.
    var ip = hops[i].replace(/^[ \t]+|[ \t]+$/g, "");
    return ip.length <= 45 && (ipv4(ip) || ipv6(ip)) ? ip : "";
  }

  function auth() {
    var override = str("timescale.in.auth");
    if (override !== "") {
      return override;
    }
    if (str("jwt.VJ-VerifyJWT.valid") === "true") {
      return "jwt";
    }
    if (str("access_token") !== "") {
      return "oauth2";
    }
    if (str("verifyapikey.VA-VerifyAPIKey.client_id") !== "" || str("client_id") !== "") {
      return "apikey";
    }
    return "none";
  }

  try {
    setDuration("timescale.total_response_time", "system.timestamp", "client.received.start.timestamp");
    setDuration("timescale.target_response_time", "target.received.end.timestamp", "target.sent.start.timestamp");
    context.setVariable("timescale.identity.auth", auth());
    var fwd = forwardedClientIP();
    if (fwd !== "") {
      context.setVariable("timescale.forwarded_client_ip", fwd);
    }
  } catch (e) {
    // Analytics must never break the API call; the record is still built
    // and published, just without these fields.
  }
})();
