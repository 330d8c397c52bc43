// The HTTP server lives here.
