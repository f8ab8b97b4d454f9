-- OIDC logins: which IdP subject a user is, and when they last logged in.
-- (The user's email is `users.login`, their IdP groups `users.idp_groups`.)
ALTER TABLE users ADD COLUMN idp_issuer TEXT;
ALTER TABLE users ADD COLUMN idp_subject TEXT;
ALTER TABLE users ADD COLUMN last_login_at BIGINT;
