"""Generated code of ``api/admin/v1/admin.proto`` (``make proto``; git-ignored)."""
