// polyhub's passkey ceremonies. A form marked data-passkey="create" or
// "get" asks the server for the ceremony's options (data-options), hands
// them to the browser's authenticator, and submits the answer in the
// form's `ceremony` and `credential` fields. Nothing else runs here.
"use strict";

function decode(text) {
  const base64 = text.replace(/-/g, "+").replace(/_/g, "/");
  const padded = base64 + "=".repeat((4 - (base64.length % 4)) % 4);
  return Uint8Array.from(atob(padded), (c) => c.charCodeAt(0)).buffer;
}

function encode(buffer) {
  const bytes = new Uint8Array(buffer);
  let text = "";
  for (const byte of bytes) {
    text += String.fromCharCode(byte);
  }
  return btoa(text).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
}

function creationOptions(options) {
  const key = options.publicKey;
  key.challenge = decode(key.challenge);
  key.user.id = decode(key.user.id);
  for (const credential of key.excludeCredentials || []) {
    credential.id = decode(credential.id);
  }
  return key;
}

function requestOptions(options) {
  const key = options.publicKey;
  key.challenge = decode(key.challenge);
  for (const credential of key.allowCredentials || []) {
    credential.id = decode(credential.id);
  }
  return key;
}

function answer(credential) {
  const response = credential.response;
  const out = {
    id: credential.id,
    rawId: encode(credential.rawId),
    type: credential.type,
    extensions: credential.getClientExtensionResults(),
    response: { clientDataJSON: encode(response.clientDataJSON) },
  };
  if (response.attestationObject) {
    out.response.attestationObject = encode(response.attestationObject);
  } else {
    out.response.authenticatorData = encode(response.authenticatorData);
    out.response.signature = encode(response.signature);
    out.response.userHandle = response.userHandle ? encode(response.userHandle) : null;
  }
  return out;
}

async function ceremony(form) {
  const body = new URLSearchParams();
  for (const name of ["csrf", "ticket"]) {
    if (form.elements[name]) {
      body.set(name, form.elements[name].value);
    }
  }
  const reply = await fetch(form.dataset.options, {
    method: "POST",
    body,
    credentials: "same-origin",
  });
  const options = await reply.json();
  if (!reply.ok) {
    throw new Error(options.error ? options.error.message : "the server refused");
  }
  const credential =
    form.dataset.passkey === "create"
      ? await navigator.credentials.create({ publicKey: creationOptions(options.options) })
      : await navigator.credentials.get({ publicKey: requestOptions(options.options) });
  form.elements.ceremony.value = options.ceremony;
  form.elements.credential.value = JSON.stringify(answer(credential));
  form.submit();
}

for (const form of document.querySelectorAll("form[data-passkey]")) {
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const status = form.querySelector("[role=status]");
    status.textContent = "Waiting for your passkey…";
    ceremony(form).catch((error) => {
      status.textContent = "The passkey did not answer: " + error.message;
    });
  });
}
