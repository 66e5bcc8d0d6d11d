// Starts Swagger UI on the /docs page (api/docs.py). A file rather than an inline script,
// so that the page's Content-Security-Policy can allow scripts from 'self' alone.
"use strict";
(function () {
  var root = document.getElementById("swagger-ui");
  window.ui = SwaggerUIBundle({
    // The page names the document by a relative URL: under a proxy's path prefix it
    // resolves beside the page, wherever the page is.
    url: root.dataset.url,
    domNode: root,
    deepLinking: true,
    // Swagger UI's default sends the document's URL to validator.swagger.io for a badge.
    validatorUrl: null,
    presets: [SwaggerUIBundle.presets.apis],
    layout: "BaseLayout",
  });
})();
