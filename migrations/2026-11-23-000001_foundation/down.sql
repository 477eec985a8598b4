DROP TABLE password_reset_tokens;
DROP TABLE refresh_tokens;
DROP TABLE sessions;
DROP TABLE workspace_quotas;
DROP TABLE workspace_members;
DROP TABLE workspaces;
DROP TABLE users;
