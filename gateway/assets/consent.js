// The approval page's consent on chain: when the patient allows the app with "Also record this
// consent on the blockchain" ticked, the browser's wallet (EIP-1193, `window.ethereum`) signs
// the grant and the approval carries the signature; the only script on that page (its
// Content-Security-Policy allows this file alone).
//
// On Allow: asks the wallet for the account (`eth_requestAccounts`), gets the grant to sign
// from the gateway (EIP-712 typed data: the gateway builds it from the pending request, with
// the ticked scopes and the chosen expiry, for the wallet bound to the patient's record), has
// the wallet sign it (`eth_signTypedData_v4`), puts the signature in the form and submits it.
// The gateway relays the grant it built (not what the page sends) and only then lets the app
// in. With the box unticked, or on Deny, the form goes as it is.
"use strict";

(function () {
  const form = document.getElementById("approve-form");
  const box = document.getElementById("consent-record");
  const status = document.getElementById("consent-status");
  if (!form || !box || !status || !form.dataset.consentUrl) return;
  const signature = form.elements.consent_signature;
  let busy = false;

  function say(text) {
    status.textContent = text;
  }

  // the form's fields the gateway needs to build the grant (the ticked scopes, the expiry)
  function grantFields() {
    const fields = new URLSearchParams();
    fields.append("csrf_token", form.elements.csrf_token.value);
    fields.append("request", form.elements.request.value);
    for (const scope of form.querySelectorAll('input[name="scope"]:checked')) {
      fields.append("scope", scope.value);
    }
    fields.append("consent_expiry", form.elements.consent_expiry.value);
    return fields;
  }

  async function signConsent(submitter) {
    const wallet = window.ethereum;
    if (!wallet || typeof wallet.request !== "function") {
      say(
        "No Ethereum wallet was found in this browser, so the consent cannot be signed. Untick " +
          "\"Also record this consent on the blockchain\" to allow the app without it.",
      );
      return;
    }
    busy = true;
    try {
      say("Asking your wallet for your account…");
      const accounts = await wallet.request({ method: "eth_requestAccounts" });
      const address = Array.isArray(accounts) ? accounts[0] : undefined;
      if (!address) {
        say("Your wallet did not share an account. Try again and allow this site.");
        return;
      }
      say("Preparing the consent to sign…");
      const response = await fetch(form.dataset.consentUrl, {
        method: "POST",
        credentials: "same-origin",
        headers: { "content-type": "application/x-www-form-urlencoded" },
        body: grantFields(),
      });
      const answer = await response.json().catch(() => ({}));
      const typedData = answer.typedData;
      if (!response.ok || !typedData || !typedData.message) {
        say(answer.error || "The consent could not be prepared. Reload the page and try again.");
        return;
      }
      const patient = String(typedData.message.patient);
      if (patient.toLowerCase() !== String(address).toLowerCase()) {
        say(
          "Your wallet's account " + address + " is not the one linked to your record (" +
            patient + "). Switch your wallet to that account and choose Allow again.",
        );
        return;
      }
      say("Confirm the consent in your wallet…");
      signature.value = await wallet.request({
        method: "eth_signTypedData_v4",
        params: [address, JSON.stringify(typedData)],
      });
      say("Recording your consent on the blockchain…");
      form.requestSubmit(submitter);
    } catch (error) {
      signature.value = "";
      // EIP-1193: 4001 is the user saying no
      if (error && error.code === 4001) {
        say(
          "You declined in your wallet. Choose Allow to sign the consent, or untick the box to " +
            "allow the app without it.",
        );
      } else {
        say("Your wallet could not sign the consent. Try again.");
      }
    } finally {
      busy = false;
    }
  }

  form.addEventListener("submit", (event) => {
    const submitter = event.submitter;
    const approving = submitter && submitter.value === "approve";
    if (!approving || !box.checked) {
      signature.value = "";
      return;
    }
    if (signature.value) return; // signed: the approval goes
    event.preventDefault();
    if (!busy) signConsent(submitter);
  });
})();
