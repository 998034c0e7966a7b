/*
 * JS-PrepareCallRecord: computes what an Apigee message template cannot.
 * Message templates have no arithmetic and no conditionals (the template
 * function list is string functions only: escapeJSON, firstnonnull,
 * substring, replaceAll, hashes, time formats...), so the two durations and
 * the identity.auth label are derived here and read by AM-BuildCallRecord.
 *
 * Contract (kept in sync with DeriveVars in deploy/apigee/bundle.go; a Go
 * test runs this file under node and compares):
 *   timescale.total_response_time  = system.timestamp - client.received.start.timestamp
 *   timescale.target_response_time = target.received.end.timestamp - target.sent.start.timestamp
 *     (ms; set only when both are 1-15 digit epoch-ms values, start > 0, end >= start)
 *   timescale.identity.auth = timescale.in.auth if a proxy set it, else
 *     "jwt"    when VerifyJWT policy "VJ-VerifyJWT" validated a token,
 *     "oauth2" when OAuthV2 VerifyAccessToken ran (it sets access_token),
 *     "apikey" when VerifyAPIKey ran (it sets client_id),
 *     "none"   otherwise.
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
  } catch (e) {
    // Analytics must never break the API call; the record is still built
    // and published, just without these fields.
  }
})();
