"""Services: the API they are written against, and the ones twinline ships."""

from twinline.services.api import Service, ServiceCall
from twinline.services.basic import BasicCall
from twinline.services.destination import Destination
from twinline.services.forwarding import Forwarding
from twinline.services.prepaid import Prepaid
from twinline.services.screening import ScreeningService
from twinline.services.translation import Translation

# Services by name, as the routing plan (`[[plan]] service = ...`) names them.
SERVICES: dict[str, type[Service]] = {  # type: ignore[type-arg]
    BasicCall.name: BasicCall,
    Prepaid.name: Prepaid,
    Translation.name: Translation,
    Forwarding.name: Forwarding,
    ScreeningService.name: ScreeningService,
}

__all__ = ["SERVICES", "Destination", "Service", "ServiceCall"]
