from service.server import serve

serve()
