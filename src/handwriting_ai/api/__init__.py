"""HTTP edge: a Litestar app built by `create_app(settings, ...)`."""
