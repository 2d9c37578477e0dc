"""HTTP routers: parse the request, call the domain module, shape the response."""
