// Sign-In with Ethereum (EIP-4361) on the gateway's sign-in page and on its link page (where a
// patient's wallet is bound to their record with a link code): the only script on the
// authorization server's pages (their Content-Security-Policy allows this file alone).
//
// With the browser's wallet (EIP-1193, `window.ethereum`): asks for the account
// (`eth_requestAccounts`), gets the message to sign from the gateway (its nonce is bound to
// this browser's session), has the wallet sign it (`personal_sign`, EIP-191) and posts the
// message and signature with the form; the gateway verifies them and signs the patient in.
"use strict";

(function () {
  const form = document.getElementById("siwe-form");
  const button = document.getElementById("siwe-button");
  const status = document.getElementById("siwe-status");
  if (!form || !button || !status) return;

  function say(text) {
    status.textContent = text;
  }

  // the message as the hex of its UTF-8 bytes, as wallets expect personal_sign's data
  function toHex(text) {
    const bytes = new TextEncoder().encode(text);
    let hex = "0x";
    for (const byte of bytes) hex += byte.toString(16).padStart(2, "0");
    return hex;
  }

  async function signIn() {
    const wallet = window.ethereum;
    if (!wallet || typeof wallet.request !== "function") {
      say(
        "No Ethereum wallet was found in this browser. To sign in as a patient you need a " +
          "wallet (such as a browser extension) holding the account registered for you.",
      );
      return;
    }
    // the link page: the code comes first (the gateway checks it again)
    const code = form.elements.code;
    if (code && !code.value.trim()) {
      say("Enter the link code from your care provider first.");
      code.focus();
      return;
    }
    button.disabled = true;
    try {
      say("Asking your wallet for your account…");
      const accounts = await wallet.request({ method: "eth_requestAccounts" });
      const address = Array.isArray(accounts) ? accounts[0] : undefined;
      if (!address) {
        say("Your wallet did not share an account. Try again and allow this site.");
        return;
      }
      say("Getting the message to sign…");
      const response = await fetch(form.dataset.messageUrl, {
        method: "POST",
        credentials: "same-origin",
        headers: { "content-type": "application/x-www-form-urlencoded" },
        body: new URLSearchParams({
          csrf_token: form.elements.csrf_token.value,
          address: address,
        }),
      });
      const answer = await response.json().catch(() => ({}));
      if (!response.ok || typeof answer.message !== "string") {
        say(answer.error || "The sign-in message could not be made. Reload the page and try again.");
        return;
      }
      say("Confirm the sign-in in your wallet…");
      const signature = await wallet.request({
        method: "personal_sign",
        params: [toHex(answer.message), address],
      });
      form.elements.message.value = answer.message;
      form.elements.signature.value = signature;
      say("Signing you in…");
      form.submit();
    } catch (error) {
      // EIP-1193: 4001 is the user saying no
      if (error && error.code === 4001) {
        say("You declined in your wallet. Choose the button again to sign in.");
      } else {
        say("Your wallet could not sign you in. Try again.");
      }
    } finally {
      button.disabled = false;
    }
  }

  button.addEventListener("click", signIn);
})();
