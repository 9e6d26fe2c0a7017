"""The laptop's side: what a client machine keeps and checks on its own.

* ``machine``: the machine fingerprint a borrowed file is bound to;
* ``container``: the container home, the folder holding one borrowing identity and its files;
* ``borrower``: enroll, borrow, return and use offline, over the container and the client;
* ``trust``: which servers the client trusts (the welcome's proof and the pinned keys).
"""
