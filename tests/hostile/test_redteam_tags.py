"""Red team, issue 20 follow-up: tag forms the tagged-frame tests did not send.

Linux takes an outer tag of VID 0 as no tag whether its TPID is 802.1Q or 802.1ad, and
strips VID 0 tags one after another. So an S-tag alone with VID 0, or an S-tag of VID 0
around a C-tag of VID 0, carries an ARP claim the victim's kernel accepts, and a SYN
the bridge would flood. The same checks as tests/hostile/test_tagged_frames.py, on a
daemon of this module's own: the victim's neighbour table stays as it was and its
capture shows no claim and no SYN to 169.254.169.254.
"""

from __future__ import annotations

import pytest

from tests.hostile import test_tagged_frames as tagged
from tests.hostile.test_tagged_frames import world  # noqa: F401 (the module's daemon)

pytestmark = pytest.mark.netns

MORE_FORMS = {
    "stag-vid0": ["--vlan", "88a8:0"],
    "stag-vid0-ctag-vid0": ["--vlan", "88a8:0", "--vlan", "0"],
    "ctag-vid0-stag-vid0": ["--vlan", "0", "--vlan", "88a8:0"],
    "stag-vid0-ieee802": ["--vlan", "88a8:0", "--hardware", "6"],
}


@pytest.mark.parametrize("form", sorted(MORE_FORMS))
def test_more_tagged_arp_claims_leave_the_victims_table_unchanged(world, tmp_path,  # noqa: F811
                                                                  form, monkeypatch):
    monkeypatch.setitem(tagged.CLAIM_FORMS, form, MORE_FORMS[form])
    tagged.test_arp_claims_leave_the_victims_neighbour_table_unchanged(world, tmp_path, form)


@pytest.mark.parametrize("form", sorted(f for f, a in MORE_FORMS.items()
                                        if "--hardware" not in a))
def test_more_tagged_syns_reach_no_other_guest(world, tmp_path, form,  # noqa: F811
                                               monkeypatch):
    monkeypatch.setitem(tagged.SYN_FORMS, form, MORE_FORMS[form])
    tagged.test_tagged_syns_to_the_metadata_address_reach_no_other_guest(world, tmp_path, form)
