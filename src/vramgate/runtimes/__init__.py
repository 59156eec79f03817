"""Where engine processes live, behind one `Runtime` protocol (base.py): local process groups
(local.py) today; a runtime for containers or other machines is one more module here."""
