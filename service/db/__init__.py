from service.db.database import Database

__all__ = ["Database"]
