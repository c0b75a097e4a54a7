// Trainer tab (trainer_ext): client-side helpers. The WebUI loads this file on every page; the
// standalone server runs it on page load. Only window.trainerExt is defined globally.
(function () {
    function root() {
        // the WebUI's gradioApp() knows where gradio put the app; plain gradio has it in document
        return typeof gradioApp === "function" ? gradioApp() : document;
    }

    function fallbackCopy(text) {
        // navigator.clipboard needs https or localhost; a WebUI opened over the LAN has neither
        var area = document.createElement("textarea");
        area.value = text;
        area.setAttribute("readonly", "");
        area.style.position = "fixed";
        area.style.opacity = "0";
        document.body.appendChild(area);
        area.select();
        var ok = false;
        try {
            ok = document.execCommand("copy");
        } catch (e) {
            ok = false;
        }
        document.body.removeChild(area);
        return ok;
    }

    function flash(message) {
        var button = root().querySelector("#trainer_ext_copy");
        if (!button) return;
        var old = button.dataset.label || button.textContent;
        button.dataset.label = old;
        button.textContent = message;
        setTimeout(function () { button.textContent = button.dataset.label; }, 1200);
    }

    function copy(text) {
        text = (text || "").trim();
        if (!text) {
            flash("Nothing yet");
            return;
        }
        if (navigator.clipboard && window.isSecureContext) {
            navigator.clipboard.writeText(text).then(
                function () { flash("Copied ✓"); },
                function () { flash(fallbackCopy(text) ? "Copied ✓" : "Copy failed"); });
        } else {
            flash(fallbackCopy(text) ? "Copied ✓" : "Copy failed");
        }
    }

    window.trainerExt = { copy: copy };
})();
