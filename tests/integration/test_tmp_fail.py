from test_real_services import *  # noqa

@pytest.mark.timeout(60)
class TestTmp:
    def test_fails(self, cluster):
        assert cluster.get(cluster.send("proj.ping")) == "pong"
        cluster.get(cluster.send("proj.sleep_forever", "x"), timeout=2)
