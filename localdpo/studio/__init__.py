"""The steer studio: a local web page to watch a model write, cut its answer, correct it and let it resume.

`localdpo studio` serves it (`localdpo.cli.studio`). Modules: `session` (answer sessions: generation, cuts,
steers, resume, streamed as token pieces that always add up to the decoded text, `localdpo.steers.text`; the
start and tuned models),
`store` (the steer file, written atomically under a lock), `training` (training runs from the page in a
`localdpo train` process; the tuned model), `app` (the routes, the token check and the request limits; the
review view shows each steer's scored tokens by `localdpo.steers.preview.steer_view`), `server` (model loading,
binding, uvicorn), `errors` (the refusal type), `static/` (the page: plain HTML, JS and CSS). See docs/studio.md.
"""
